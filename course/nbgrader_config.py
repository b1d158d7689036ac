"""nbgrader's configuration of the course: this folder is the course root, wherever nbgrader or JupyterLab starts
(the repository root's nbgrader_config.py loads this file). The assignments are the folders of source/; grading.py
holds the course's own preprocessors (what each does: its docstring)."""
import os
import sys
import warnings

from jupyter_core.paths import jupyter_runtime_dir
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds, Execute,
                                    GetGrades, IgnorePattern, LimitOutput, OverwriteKernelspec, SaveAutoGrades)

c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "grto"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
if c.CourseDirectory.root not in sys.path:
    sys.path.insert(0, c.CourseDirectory.root)
from grading import GradeOutsideKernel, RestoreHiddenTests, WithoutHiddenTests  # noqa: E402

# nbgrader's own lists, with the course's preprocessors in place: RestoreHiddenTests instead of OverwriteCells,
# GradeOutsideKernel right after the notebook ran, WithoutHiddenTests before the feedback is written.
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoreHiddenTests,
                                      CheckCellMetadata]
c.Autograde.autograde_preprocessors = [Execute, GradeOutsideKernel, IgnorePattern, ClearMetadataPreprocessor,
                                       LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.GenerateFeedback.preprocessors = [GetGrades, WithoutHiddenTests, CSSHTMLHeaderPreprocessor]

# The kernels that run submissions talk to nbgrader over local sockets (IPC) in Jupyter's private runtime folder:
# over TCP, ipykernel logs "Kernel is running over TCP without encryption" for every notebook. The path is absolute
# because a kernel starts in its notebook's folder, and one a process, because kernels number their sockets from 1.
c.KernelManager.transport = "ipc"
c.KernelManager.ip = os.path.join(jupyter_runtime_dir(), f"nbgrader-{os.getpid()}-ipc")
os.makedirs(jupyter_runtime_dir(), exist_ok=True)

# nbgrader's gradebook, under SQLAlchemy 2, warns "Object of type <SubmittedAssignment> not in session" for each new
# submission: a known, harmless message of nbgrader's (it adds the rows itself), not one for the instructor.
warnings.filterwarnings("ignore", message=r"Object of type <Submitted\w+> not in session")

# nbgrader runs `alembic` by name to create the gradebook: let it find the one beside the Python running nbgrader,
# also when that is .venv/bin/jupyter or .venv/bin/nbgrader with the venv not on PATH.
bin_folder = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != bin_folder:
    os.environ["PATH"] = os.pathsep.join([bin_folder, os.environ.get("PATH", "")])

# Where "release" and "collect" pass assignments to the students of this machine (a JupyterHub sets its own),
# created with the permissions nbgrader's release checks for (all may read and write), so that it logs no change.
c.Exchange.root = os.path.join(os.path.expanduser("~"), ".local", "share", "nbgrader", "exchange")
if not os.path.isdir(c.Exchange.root):
    os.makedirs(c.Exchange.root)
    os.chmod(c.Exchange.root, 0o777)
