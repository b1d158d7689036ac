"""nbgrader's configuration for the course (run nbgrader from this folder; see the README, "For instructors")."""
c = get_config()  # noqa: F821 (nbgrader provides it)
c.CourseDirectory.course_id = "grto"
c.CourseDirectory.db_assignments = [dict(name="grto_exercises")]
