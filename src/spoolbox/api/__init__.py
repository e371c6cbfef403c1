"""The daemon's local API: its wire schema and the Python client (``spoolbox.api.client``)."""
