import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("kunpay", "0003_callbacks_janitor")]

    initial = False

    operations = [
        ops.AlterField(
            model_name="DeadLetter",
            name="reason",
            field=fields.CharField(db_index=True, max_length=100),
        ),
        ops.AlterField(
            model_name="DeadLetter",
            name="replayed_at",
            field=fields.DatetimeField(
                null=True, db_index=True, auto_now=False, auto_now_add=False
            ),
        ),
        ops.AddField(
            model_name="DeadLetter",
            name="app",
            field=fields.CharField(null=True, db_index=True, max_length=64),
        ),
        ops.AddField(
            model_name="DeadLetter",
            name="exchange",
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name="DeadLetter",
            name="fingerprint",
            field=fields.CharField(null=True, unique=True, max_length=64),
        ),
        ops.AddField(
            model_name="DeadLetter",
            name="properties",
            field=fields.JSONField(
                default=dict, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
            ),
        ),
    ]
