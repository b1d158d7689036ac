"""nbgrader's configuration when JupyterLab (its Formgrader) or nbgrader starts from the repository root: the
course is course/, configured by course/nbgrader_config.py."""
import os

load_subconfig(os.path.join(os.path.dirname(os.path.abspath(__file__)), "course", "nbgrader_config.py"))  # noqa: F821
