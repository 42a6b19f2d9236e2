"""The SQL store: the app's `generated_posts` (read only) and the platform's own tables, with no Dagster import."""
