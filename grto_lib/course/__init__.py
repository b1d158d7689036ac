"""The course's checker: what the graded exercises of course/ (nbgrader) call, not part of the method.

``exercises``: each exercise's visible check (``check_<exercise>``), and ``check_hidden``, which the notebooks'
grade cells call (``from grto_lib.course import exercises``); ``rules``: what every check shares (the failure a
student sees, what an answer may not borrow from grto_lib, how results are compared); ``grading``: the hidden tests
and the process that runs them outside the student's kernel, for the repository's course/grading.py (nbgrader's
preprocessors). It ships in the package because the students' kernels import it; the method is the rest of
grto_lib.
"""
