"""A stored case is an OME-Zarr 0.5 image that OME-Zarr tools validate and open (docs/store-format.md)."""

from __future__ import annotations

import pytest
import zarr

from skelprep import open_store
from skelprep.build import build


@pytest.fixture
def octa_store(octa_dataset, tmp_path):
    out = tmp_path / "s.zarr"
    assert build(octa_dataset, out, workers=1, with_images=True).ok
    return out


def test_a_case_validates_as_an_ome_zarr_image_with_three_labels(octa_store):
    pytest.importorskip("ome_zarr_models", reason="ome-zarr-models is in the dev extra")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    case_id = open_store(octa_store).case_ids[0]
    image = Image.from_zarr(zarr.open_group(str(octa_store / case_id), mode="r"))
    assert [a.name for a in image.attributes.ome.multiscales[0].axes] == ["c", "i", "j", "k"]
    assert image.labels is not None and list(image.labels.attributes.ome.labels) == ["tube", "thin", "label"]
    for name in ("label", "tube", "thin"):
        label = ImageLabel.from_zarr(zarr.open_group(str(octa_store / case_id / "labels" / name), mode="r"))
        assert [p.name for p in label.attributes.ome.image_label.properties] == ["vessel"]


def test_ome_zarrs_reader_opens_the_image_and_three_label_layers_at_the_spacing(octa_store):
    pytest.importorskip("ome_zarr", reason="ome-zarr is in the dev extra")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    store = open_store(octa_store)
    case_id = store.case_ids[0]
    case = store[case_id]
    spacing = list(case.spacing)
    nodes = {node.zarr.basename(): node for node in Reader(parse_url(str(octa_store / case_id)))()}
    assert set(nodes) == {case_id, "labels", "label", "tube", "thin"}
    image = nodes[case_id]
    assert [d.shape for d in image.data] == [case.image.shape]
    assert image.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": [1.0, *spacing]}]]
    for name in ("label", "tube", "thin"):
        layer = nodes[name]
        assert [d.shape for d in layer.data] == [case.shape]
        assert layer.metadata["coordinateTransformations"] == [[{"type": "scale", "scale": spacing}]]
    assert (nodes["tube"].data[0].compute() == case.tube[...]).all()


def test_napari_ome_zarrs_reader_opens_a_case(octa_store):
    pytest.importorskip("napari", reason="napari (a Qt application) is not installed; no light install")
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")

    case_id = open_store(octa_store).case_ids[0]
    reader = napari_ome_zarr.napari_get_reader(str(octa_store / case_id))
    layers = reader(str(octa_store / case_id))
    assert sorted(kind for _, _, kind in layers) == ["image", "labels", "labels", "labels"]
