"""Small host apps that the end-to-end tests serve with real gunicorn workers."""
