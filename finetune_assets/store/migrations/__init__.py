"""The Alembic environment of the platform's `ft_*` tables, configured in code (no alembic.ini).

`finetune_assets.store.migrate` runs it: on start (`ensure_schema`) and from `finetune-assets db upgrade`.
The content app's `generated_posts` is never part of a revision. To add one, change `store/schema.py`, then
write `versions/vNNNN_<slug>.py` by hand or draft it against a database at head with
`alembic.command.revision(migrate.alembic_config(connection), message=..., autogenerate=True)`, and review it:
autogenerate misses renames and some index options.
"""
