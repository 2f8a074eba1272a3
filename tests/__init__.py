"""The test suite (`make test`); shared helpers live in conftest.py and the non-test modules here."""
