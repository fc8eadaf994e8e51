"""Images: the project's and the public ones; upload (checked by the API) and delete."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cloudapi.v1 import compute_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_wtf.csrf import CSRFError

from dashboard import api
from dashboard.forms import ActionForm, ImageForm
from dashboard.helpers import check_csrf_before_the_body, json_error

bp = Blueprint("images", __name__)


def _page(form: ImageForm | None = None, status: int = 200) -> Any:
    images = api.call(api.client().images.ListImages, pb.ListImagesRequest()).images
    return render_template("images.html", images=sorted(images, key=lambda i: i.name),
                           upload=form or ImageForm(), form=ActionForm()), status


@bp.get("/images")
def index() -> Any:
    return _page()


@bp.get("/images/<ref>")
def detail(ref: str) -> Any:
    image = api.call(api.client().images.GetImage, pb.GetImageRequest(id_or_name=ref))
    return render_template("image.html", image=image, form=ActionForm())


@bp.post("/images/upload")
def upload() -> Any:
    # A member's (the login, size and CSRF checks ran before the body was read:
    # dashboard.app._guard); parsing the form spools the files to disk.
    form = ImageForm()
    if not form.validate():
        return _page(form, 400)
    if bool(form.kernel.data) != bool(form.initrd.data):
        form.kernel.errors = ["a kernel and an initrd go together: both or neither"]
        return _page(form, 400)
    info = pb.ImageInfo(name=form.name.data, disk_format=form.disk_format.data, os=form.os.data or "",
                        visibility="public" if form.public.data else "private",
                        cmdline=form.cmdline.data or "")
    with tempfile.TemporaryDirectory(prefix="dashboard-upload-") as tmp:
        paths: dict[str, str] = {}
        for part in ("disk", "kernel", "initrd"):
            storage = getattr(form, part).data
            if storage:
                path = Path(tmp) / part
                storage.save(path)
                paths[part] = str(path)
        image = api.client().upload_image(info, paths["disk"], paths.get("kernel", ""),
                                          paths.get("initrd", ""))
    api.forget_images()
    flash(f"Image {image.name} uploaded ({image.disk_format}, {image.status}).", "info")
    return redirect(url_for("images.index"))


@bp.get("/images/upload/allowed")
def upload_allowed() -> Any:
    """Asked by the front proxy (nginx's auth_request, with the upload's
    headers and no body) before it takes an upload's body: 204 for a member
    with the upload's CSRF token; 401 without a login (dashboard.app._guard),
    403 without the token. The proxy passes the upload's URL in X-Original-URI."""
    query = urlsplit(request.headers.get("X-Original-URI", "")).query
    try:
        check_csrf_before_the_body(parse_qs(query).get("csrf_token", [""])[0])
    except CSRFError as exc:
        return json_error(f"The upload was refused: {exc.description}", "CSRF", 403)
    return "", 204


@bp.post("/images/<ref>/delete")
def delete(ref: str) -> Any:
    api.call(api.client().images.DeleteImage, pb.DeleteImageRequest(id_or_name=ref))
    api.forget_images()
    flash(f"Image {ref} deleted.", "info")
    return redirect(url_for("images.index"))
