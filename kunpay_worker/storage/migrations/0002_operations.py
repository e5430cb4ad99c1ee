from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("kunpay", "0001_initial")]

    initial = False

    operations = [
        ops.AddField(
            model_name="PaymentType",
            name="currency",
            field=fields.CharField(default="XAF", db_default="XAF", max_length=8),
        ),
        ops.AddField(
            model_name="Transaction",
            name="attempt_root",
            field=fields.UUIDField(null=True, db_index=True),
        ),
        ops.AddField(
            model_name="Transaction",
            name="late_checks",
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name="Transaction",
            name="needs_reconciliation",
            field=fields.BooleanField(default=False, db_default=False),
        ),
        ops.AddField(
            model_name="Transaction",
            name="net_amount",
            field=fields.DecimalField(null=True, max_digits=18, decimal_places=4),
        ),
        ops.AddField(
            model_name="Transaction",
            name="provider_handle",
            field=fields.CharField(null=True, max_length=128),
        ),
        ops.AddField(
            model_name="Transaction",
            name="send_after",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
