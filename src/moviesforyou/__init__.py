"""MoviesForYou shared code."""
