"""The ``wod`` service: a JupyterHub managed service with the REST API, operations, mail and callbacks."""
