"""Export loaders: write a dataset's typed copy or a job's artifact into a destination table."""
