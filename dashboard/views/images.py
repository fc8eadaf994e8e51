"""Images: the project's and the public ones; upload (checked by the API) and delete."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cloudapi.v1 import compute_pb2 as pb
from flask import Blueprint, flash, redirect, render_template, url_for

from dashboard import api
from dashboard.forms import ActionForm, ImageForm

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


@bp.post("/images/<ref>/delete")
def delete(ref: str) -> Any:
    api.call(api.client().images.DeleteImage, pb.DeleteImageRequest(id_or_name=ref))
    api.forget_images()
    flash(f"Image {ref} deleted.", "info")
    return redirect(url_for("images.index"))
