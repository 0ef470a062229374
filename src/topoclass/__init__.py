"""topoclass: multitask classifiers of topological materials that never lose training progress."""

__version__ = "0.5.0"
