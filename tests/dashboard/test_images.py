"""images blueprint: list, upload through the form (checked by the API), delete."""

import io
import re
import uuid

from cloudapi.v1 import compute_pb2 as pb


def test_list_shows_the_default_image(demo):
    page = demo.get("/images").get_data(as_text=True)
    assert "<table" in page and "public" in page


def test_upload_and_delete(demo, api):
    # The form's action carries its CSRF token (checked before the body is read).
    action = re.search(r'action="(/images/upload\?csrf_token=[^"]+)"',
                       demo.get("/images").get_data(as_text=True)).group(1)
    name = f"img-{uuid.uuid4().hex[:6]}"
    response = demo.client.post(action, data={
        "name": name, "disk_format": "raw", "os": "zeros",
        "disk": (io.BytesIO(b"\0" * 65536), "disk.raw")}, content_type="multipart/form-data")
    assert response.status_code == 302, response.get_data(as_text=True)
    page = demo.get("/images").get_data(as_text=True)
    assert name in page and "uploaded" in page
    image_id = next(i.id for i in api.images.ListImages(pb.ListImagesRequest()).images if i.name == name)
    detail = demo.get(f"/images/{image_id}").get_data(as_text=True)
    assert "private" in detail and "raw" in detail
    assert demo.post(f"/images/{image_id}/delete").status_code == 302
    assert f"Image {image_id} deleted." in demo.get("/images").get_data(as_text=True)
    assert name not in [i.name for i in api.images.ListImages(pb.ListImagesRequest()).images]


def test_a_wrong_format_is_refused_with_the_apis_reason(demo):
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{tmp}/d.qcow2", "1G"], check=True)
        data = open(f"{tmp}/d.qcow2", "rb").read()
    response = demo.post(f"/images/upload?csrf_token={demo.csrf}", data={
        "name": f"img-{uuid.uuid4().hex[:6]}", "disk_format": "raw",
        "disk": (io.BytesIO(data), "d.qcow2")}, content_type="multipart/form-data")
    assert response.status_code == 302
    page = demo.get("/images").get_data(as_text=True)
    assert 'class="flash error"' in page and "qcow2" in page and "Traceback" not in page


def test_upload_needs_a_file(demo):
    response = demo.post(f"/images/upload?csrf_token={demo.csrf}", data={"name": "x", "disk_format": "raw"},
                         content_type="multipart/form-data")
    assert response.status_code == 400
