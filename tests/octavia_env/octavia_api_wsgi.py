"""The Octavia API as a WSGI application for gunicorn, configured from one file.

Octavia's own ``octavia.wsgi.api`` hands ``sys.argv`` to oslo.config, which under gunicorn
holds gunicorn's arguments and fails to parse; this module gives Octavia exactly
``--config-file $LBACTORS_OCTAVIA_CONF --log-file $LBACTORS_OCTAVIA_API_LOG`` instead.
It runs inside ``.octavia-venv`` (see ``tests/octavia_stack.py``), never in the project's venv.
"""

import os

from octavia.api import app

application = app.setup_app(
    argv=[
        "octavia-api",
        "--config-file",
        os.environ["LBACTORS_OCTAVIA_CONF"],
        "--log-file",
        os.environ["LBACTORS_OCTAVIA_API_LOG"],
    ]
)
