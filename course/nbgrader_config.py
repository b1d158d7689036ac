"""nbgrader's configuration of the course: this folder is the course root, wherever nbgrader or JupyterLab starts
(the repository root's nbgrader_config.py loads this file). The assignments are the folders of source/."""
import os
import sys

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "grto"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))

# nbgrader runs `alembic` by name to create the gradebook: let it find the one beside the Python running nbgrader,
# also when that is .venv/bin/jupyter or .venv/bin/nbgrader with the venv not on PATH.
bin_folder = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_folder:
    os.environ["PATH"] = os.pathsep.join([bin_folder, os.environ.get("PATH", "")])

# Where "release" and "collect" pass assignments to the students of this machine (a JupyterHub sets its own).
c.Exchange.root = os.path.join(os.path.expanduser("~"), ".local", "share", "nbgrader", "exchange")
os.makedirs(c.Exchange.root, exist_ok=True)
