"""gunicorn settings for the example app, sized for Tencent's 2-second callback budget.

Run from the project's root: ``gunicorn -c examples/gunicorn.conf.py``.

``LOG_FORMAT=json`` writes the package's records as JSON lines (for a log shipper) instead of
text lines.
"""

import glob
import importlib.util
import os
import shutil
import tempfile

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

# The package's records (logger "flask_oa_recall") and the app's go to gunicorn's error log, with
# time, pid, level and logger name. Configured here, in the master, so that what the app logs
# while it starts in a worker (an unreachable store...) is formatted too.
_package_format = (
    {"()": "flask_oa_recall.logging.JSONFormatter"}
    if os.environ.get("LOG_FORMAT") == "json"
    else {
        "format": "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
    }
)
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "WARNING", "handlers": ["package"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "flask_oa_recall": {"level": "INFO", "handlers": ["package"], "propagate": False},
        "mirror_app": {"level": "INFO", "handlers": ["package"], "propagate": False},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stdout",
        },
        "error_console": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr",
        },
        "package": {
            "class": "logging.StreamHandler",
            "formatter": "package",
            "stream": "ext://sys.stderr",
        },
    },
    "formatters": {
        "generic": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
        },
        "package": _package_format,
    },
}

# Metrics (when the ``metrics`` extra is installed): prometheus_client's multiprocess mode, so
# that /metrics, answered by any one worker, counts what every worker did. The folder must be
# set before a worker imports prometheus_client, and be empty when the server starts.
_own_metrics_dir = None
if importlib.util.find_spec("prometheus_client") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="oa-recall-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir


def on_starting(server):
    """Drop what a previous run left in the metrics folder."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and os.path.isdir(folder):
        for path in glob.glob(os.path.join(folder, "*.db")):
            os.remove(path)


def child_exit(server, worker):
    """Let prometheus_client forget a worker that ended (its live gauges)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics folder this config created."""
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
