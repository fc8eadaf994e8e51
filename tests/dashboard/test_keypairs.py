"""keypairs blueprint: create (private key shown once), import, list, delete."""

import uuid

from cloudapi.v1 import compute_pb2 as pb

PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
              "test@dashboard")


def test_create_shows_the_private_key_once(demo, api):
    name = f"kp-{uuid.uuid4().hex[:6]}"
    response = demo.post("/keypairs/create", data={"create-name": name})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "BEGIN OPENSSH PRIVATE KEY" in page and "shown only this once" in page
    assert response.headers["Cache-Control"] == "no-store"
    listing = demo.get("/keypairs").get_data(as_text=True)
    assert name in listing and "PRIVATE KEY" not in listing
    demo.post(f"/keypairs/{name}/delete")
    assert name not in [k.name for k in api.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]


def test_import_list_delete(demo, api):
    name = f"kp-{uuid.uuid4().hex[:6]}"
    response = demo.post("/keypairs/import", data={"import-name": name, "import-public_key": PUBLIC_KEY})
    assert response.status_code == 302
    page = demo.get("/keypairs").get_data(as_text=True)
    assert name in page and "SHA256:" in page and "imported" in page
    assert demo.post(f"/keypairs/{name}/delete").status_code == 302
    assert f"Keypair {name} deleted." in demo.get("/keypairs").get_data(as_text=True)
    assert name not in [k.name for k in api.keypairs.ListKeypairs(pb.ListKeypairsRequest()).keypairs]


def test_bad_key_is_a_message(demo):
    response = demo.post("/keypairs/import", data={"import-name": "bad", "import-public_key": "nope"})
    assert response.status_code == 302
    page = demo.get("/keypairs").get_data(as_text=True)
    assert 'class="flash error"' in page and "Traceback" not in page


def test_bad_name_is_refused_by_the_form(demo):
    response = demo.post("/keypairs/create", data={"create-name": "<b>x</b>"})
    assert response.status_code == 400
    assert "<b>x</b>" not in response.get_data(as_text=True)
