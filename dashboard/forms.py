"""Every form the dashboard posts: Flask-WTF, so each carries a CSRF token."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp


def options(pairs: list[tuple[str, str]]) -> list[SelectChoice]:
    """(value, label) pairs as a SelectField's choices."""
    return [SelectChoice(value, label) for value, label in pairs]


NAME = [DataRequired(), Length(max=63),
        Regexp(r"^[A-Za-z0-9._-]+$", message="use A-Z a-z 0-9 . _ - only")]


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=128)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    project = StringField("Project", validators=[Optional(), Length(max=128)],
                          description="empty: your first project")
    next = HiddenField()


class ActionForm(FlaskForm):
    """A button: the CSRF token is all it carries."""


class RebootForm(FlaskForm):
    hard = BooleanField("Hard (reset)")


class ResizeForm(FlaskForm):
    flavor = SelectField("New flavor", validators=[DataRequired()], choices=[])


class ScaleForm(FlaskForm):
    vcpus = IntegerField("vCPUs", validators=[Optional(), NumberRange(min=0, max=1024)])
    memory_mb = IntegerField("Memory (MiB)", validators=[Optional(), NumberRange(min=0, max=10**7)])
    disk_gb = IntegerField("Disk (GiB)", validators=[Optional(), NumberRange(min=0, max=10**5)])


class LaunchForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    flavor = SelectField("Flavor", validators=[DataRequired()], choices=[])
    image = SelectField("Image", validators=[Optional()], choices=[])
    count = IntegerField("Count", default=1, validators=[DataRequired(), NumberRange(min=1, max=100)])
    key_name = SelectField("Keypair", validators=[Optional()], choices=[])
    user_data = TextAreaField("User data", validators=[Optional(), Length(max=65536)],
                              description="a #! script or #cloud-config, at most 64 KiB")
    request_id = HiddenField()


class KeypairForm(FlaskForm):
    name = StringField("Name", validators=NAME)


class ImportKeypairForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    public_key = TextAreaField("Public key (OpenSSH)", validators=[DataRequired(), Length(max=16384)])


class ImageForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    disk_format = SelectField("Disk format", choices=options([("qcow2", "qcow2"), ("raw", "raw")]))
    disk = FileField("Disk file", validators=[FileRequired()])
    kernel = FileField("Kernel (direct boot, optional)")
    initrd = FileField("Initrd (with a kernel)")
    cmdline = StringField("Kernel command line", validators=[Optional(), Length(max=1024)])
    os = StringField("OS", validators=[Optional(), Length(max=64)])
    public = BooleanField("Public (every project sees it; admin only)")


class HostForm(FlaskForm):
    enabled = HiddenField()
    reason = StringField("Reason", validators=[Optional(), Length(max=255)])


class CapacityForm(FlaskForm):
    class Meta:
        csrf = False  # a GET query, changes nothing
    flavor = SelectField("Flavor", choices=[])


class ProjectForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    description = StringField("Description", validators=[Optional(), Length(max=255)])


ROLES = options([("member", "member"), ("reader", "reader"), ("admin", "admin")])


class UserForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    password = PasswordField("Password", validators=[Optional(), Length(min=8, max=1024)],
                             description="empty: generate one")
    project = SelectField("Project", choices=[])
    role = SelectField("Role", choices=ROLES)


class RoleForm(FlaskForm):
    project = SelectField("Project", choices=[])
    role = SelectField("Role", choices=ROLES)


class QuotaForm(FlaskForm):
    instances = IntegerField("Instances", validators=[Optional(), NumberRange(min=-1)])
    vcpus = IntegerField("vCPUs", validators=[Optional(), NumberRange(min=-1)])
    memory_mb = IntegerField("RAM (MiB)", validators=[Optional(), NumberRange(min=-1)])
    disk_gb = IntegerField("Disk (GiB)", validators=[Optional(), NumberRange(min=-1)])


class FlavorForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    vcpus = IntegerField("vCPUs", validators=[DataRequired(), NumberRange(min=1, max=1024)])
    memory_mb = IntegerField("RAM (MiB)", validators=[DataRequired(), NumberRange(min=64)])
    disk_gb = IntegerField("Disk (GiB)", validators=[DataRequired(), NumberRange(min=1)])
    public = BooleanField("Public", default=True)
    projects = StringField("Projects (private: comma-separated)", validators=[Optional()])
