"""Loaded by pytest before Django (see pytest.ini): safe defaults for a test run."""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("API_RATE_LIMIT", "100000/min")
# Channel tests post to a real receiver on 127.0.0.1; tests/test_channel_urls.py turns it off to test the refusal.
os.environ.setdefault("NOTIFICATION_ALLOW_PRIVATE_URLS", "true")
# Each run gets its own folder for the SQLite test database and the filesystem broker, so test
# workers never meet messages or rows from a development server.
os.environ.setdefault("LLMCOST_VAR_DIR", tempfile.mkdtemp(prefix="llmcost-test-"))
