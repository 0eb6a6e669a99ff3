"""Example workflows that run with no API keys: `loopdeck up` publishes them by default."""

import os

WORKFLOWS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loopdeck.yaml")
