"""The ``wod`` command and the developer's demo."""
