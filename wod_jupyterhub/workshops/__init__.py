"""Workshops as folders: the catalog, template variables, rendering and notebook repair."""
