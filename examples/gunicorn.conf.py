"""gunicorn settings for the example app, sized for Tencent's 2-second callback budget.

Run from the project's root: ``gunicorn -c examples/gunicorn.conf.py``.
"""

import os

chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "mirror_app:create_app()"
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "sync"
# Tencent gives up after 2 s; a request still running after 10 s is stuck, not slow.
timeout = 10
graceful_timeout = 10
# Tencent keeps connections open between callbacks; sync workers close them anyway, which is fine.
keepalive = 5
accesslog = "-"
# The path without the query: the query holds Sign, which must not reach a log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
errorlog = "-"
loglevel = "info"
# gunicorn 25+ opens a control socket at one fixed path; two servers on a host would clash.
control_socket_disable = True
