"""shipyard: git push-to-deploy for Python web apps."""

__version__ = "0.1.0"
