"""``topoclass serve``: one resident process answering predictions over HTTP (a JSON API and a web page).

Models are loaded once at start; every prediction goes through the Python interface
(:func:`topoclass.load` -> :class:`topoclass.api.Predictor`), so whatever backend a
Predictor runs on is the server's. FastAPI and uvicorn come with ``pip install "topoclass[serve]"``.
"""
