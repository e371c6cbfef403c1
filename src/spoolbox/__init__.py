"""spoolbox: a durable message spooler for Python, on the model of the MAPI spooler."""
