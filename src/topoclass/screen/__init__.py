"""Screening many crystals with a trained model: lazy readers, chunks committed atomically, shards.

``inputs`` reads what a screen is given, one item at a time; ``chunks`` owns the output
folder (the fingerprint, the committed chunks); ``sharding`` says which chunks a process
takes; ``applicability`` flags the materials a model knows little about; ``results``
lays out the rows and merges the summary and the candidates; ``runner`` drives them.
"""
