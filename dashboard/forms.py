"""Every form the dashboard posts: Flask-WTF, so each carries a CSRF token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, Regexp, ValidationError


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
    network = SelectField("Network", validators=[Optional()], choices=[])
    # Not checked against the choices: the API decides which groups the project has.
    security_groups = SelectMultipleField("Security groups", choices=[], validate_choice=False,
                                          description="none chosen: the project's default group")
    user_data = TextAreaField("User data", validators=[Optional(), Length(max=65536)],
                              description="a #! script or #cloud-config, at most 64 KiB")
    request_id = HiddenField()

    def validate_network(self, field: SelectField) -> None:
        # The API takes networks on a single create only (CreateInstancesRequest has none).
        if field.data and (self.count.data or 1) > 1:
            raise ValidationError("a network can be chosen for one instance at a time: "
                                  "launch them one by one, or leave the default network")


class KeypairForm(FlaskForm):
    name = StringField("Name", validators=NAME)


class ImportKeypairForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    public_key = TextAreaField("Public key (OpenSSH)", validators=[DataRequired(), Length(max=16384)])


class NetworkForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    cidr = StringField("Subnet (CIDR)", validators=[Optional(), Length(max=43)],
                       description="a private IPv4 range, /16 to /29; empty: 10.0.0.0/24")


class SecurityGroupForm(FlaskForm):
    name = StringField("Name", validators=NAME)
    description = StringField("Description", validators=[Optional(), Length(max=255)])


class SecurityGroupRuleForm(FlaskForm):
    """A rule to add. The choices are not checked here: the API decides which
    directions, protocols, ports and remotes are valid, and its refusal is shown."""

    group = SelectField("Group", validators=[DataRequired()], choices=[], validate_choice=False)
    direction = SelectField("Direction", choices=options([("ingress", "ingress (in)"),
                                                          ("egress", "egress (out)")]),
                            validate_choice=False)
    protocol = SelectField("Protocol", choices=options([(p, p) for p in ("tcp", "udp", "icmp", "any")]),
                           validate_choice=False)
    port = StringField("Port or range", validators=[Optional(), Regexp(
        r"^\s*\d{1,5}\s*(-\s*\d{1,5}\s*)?$", message="a port (22) or a range (8000-8080)")],
        description="tcp and udp; empty: every port")
    remote_cidr = StringField("Remote CIDR", validators=[Optional(), Length(max=43)],
                              description="e.g. 100.64.0.0/24")
    remote_group = SelectField("Remote group", choices=[], validate_choice=False,
                               description="or the members of a group; neither: anyone")

    def ports(self) -> tuple[int, int]:
        """(port_min, port_max) as the API takes them: (0, 0) for every port."""
        low, _, high = (self.port.data or "").replace(" ", "").partition("-")
        return (int(low), int(high or low)) if low else (0, 0)


class InstanceSecurityGroupsForm(FlaskForm):
    # Not checked against the choices, nor required: the API decides (at least one).
    security_groups = SelectMultipleField("Its groups", choices=[], validate_choice=False,
                                          description="Ctrl-click to choose several")


class AttachFloatingIpForm(FlaskForm):
    address = SelectField("Floating IP", validators=[DataRequired()], choices=[])
    instance = SelectField("Instance", validators=[DataRequired()], choices=[])
    # Empty: the instance's first NIC (the API's choice).
    network = SelectField("Network", validators=[Optional()], choices=[])


class ImageForm(FlaskForm):
    class Meta:
        # Its token is in the form's action (?csrf_token=), checked before the
        # body is read (dashboard.app._guard), not in the body.
        csrf = False

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


def parse_utc(text: str) -> datetime:
    """An ISO 8601 date or time (as cloudctl takes them); without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ValidationError(f"{text!r} is not a date or time: use YYYY-MM-DD or "
                              f"YYYY-MM-DDTHH:MM[:SS] (UTC unless a zone is given)") from None


def month_start(now: datetime) -> datetime:
    """The start of now's calendar month, UTC: the usage API's default start too."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class UsageForm(FlaskForm):
    """The usage page's period [start, end) and, for admins, the project."""

    class Meta:
        csrf = False  # a GET query, changes nothing

    # Not checked against the choices: the API decides who may see which project,
    # and its refusal is what a tenant asking for another project gets.
    project = SelectField("Project", choices=[], validate_choice=False)
    start = StringField("Start (UTC)", validators=[Optional(), Length(max=64)],
                        description="default: the start of this month")
    end = StringField("End (UTC)", validators=[Optional(), Length(max=64)],
                      description="empty: now")
    page = IntegerField("Page", default=1, validators=[Optional(), NumberRange(min=1, max=10**6)])

    def validate_start(self, field: StringField) -> None:
        if field.data:
            parse_utc(field.data)

    def validate_end(self, field: StringField) -> None:
        if field.data:
            parse_utc(field.data)

    # The period asked for, set by validate(): (start, end), end None = up to now.
    period: tuple[datetime, datetime | None]

    def validate(self, extra_validators=None) -> bool:
        """Each field's syntax, then the period: start before end, end not after now."""
        if not super().validate(extra_validators):
            return False
        now = datetime.now(UTC)
        start = parse_utc(self.start.data) if self.start.data else month_start(now)
        end = parse_utc(self.end.data) if self.end.data else None
        self.period = (start, end)
        # A minute's grace: the API's clock may be ahead of this host's (a CSV link carries
        # the API's "now" as its end), and the API cuts the end to its own now anyway.
        if end is not None and end > now + timedelta(minutes=1):
            self.end.errors.append(f"The end is in the future: it may be now "
                                   f"({now:%Y-%m-%d %H:%M:%S} UTC) at the latest.")
        elif end is not None and start >= end:
            self.end.errors.append("The end must be after the start.")
        elif start >= now:
            self.start.errors.append("The start must be before now (the end).")
        return not (self.start.errors or self.end.errors)
