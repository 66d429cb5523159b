import pytest
from app import app as quickstart_app


@pytest.fixture
def app():
    quickstart_app.config.update(TESTING=True, OA_RECALL_STORE="memory://")
    return quickstart_app
