from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("kunpay", "0002_operations")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Lease",
            fields=[
                (
                    "name",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=100),
                ),
                ("holder", fields.CharField(max_length=64)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "leases",
                "app": "kunpay",
                "pk_attr": "name",
                "table_description": "A named lease that one worker holds at a time (the sweep of the janitor).",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Transaction",
            name="hint_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Transaction",
            name="stale",
            field=fields.BooleanField(default=False, db_index=True, db_default=False),
        ),
    ]
