"""What runs inside JupyterHub: the authenticator, the spawner and what they share."""
