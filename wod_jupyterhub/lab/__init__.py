"""What runs in a participant's own Jupyter server: the session bar's end of the seat API.

``extension.py`` is the jupyter-server extension (``wod_jupyterhub.lab.extension``)
that ``WodSpawner`` enables in each seat's server; its handlers (``handlers.py``)
forward the JupyterLab session bar's requests to the ``wod`` service's
``api/seat`` with the server's own token, so the browser never holds a token
of the service. The bar itself is the JupyterLab extension built from
``labextension/`` and shipped in the package's data files.

This layer runs in the students' Python: it imports only the core, never the
store, the seats or the hub.
"""
