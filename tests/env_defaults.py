"""Loaded by pytest before Django (see pytest.ini): safe defaults for a test run."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("API_RATE_LIMIT", "100000/min")
# Each run gets its own folder for the SQLite test database and the filesystem broker, so test
# workers never meet messages or rows from a development server.
os.environ.setdefault("LLMCOST_VAR_DIR", tempfile.mkdtemp(prefix="llmcost-test-"))
