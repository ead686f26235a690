"""The parameter counts the bundle docs quote, of the networks the shipped configs build (meta device: no memory)."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from tests.conftest import REPO

# bundle, config id, parameters (the figure in the bundle's docs/README.md, to three significant digits)
SHIPPED = [
    ("lung_nodule_ct_edu_segmentation", "network_def", 16_365_964),  # "16.37 M"
    ("ultrasound_se_esrgan_superresolution", "network_def", 40_207_681),  # "40.21 M"
    ("ultrasound_se_esrgan_superresolution", "discriminator_def", 4_692_545),  # "4.69 M"
    ("ct_se_esrgan_superresolution", "network_def", 4_428_129),  # "4.43 M"
    ("ct_se_esrgan_superresolution", "discriminator_def", 3_521_889),  # "3.52 M"
    ("isic_skin_hemf_classification", "network_def", 68_269_367),  # "68.27 M"
]


@pytest.mark.parametrize("bundle, key, expected", SHIPPED, ids=[f"{b.split('_')[0]}-{k}" for b, k, _ in SHIPPED])
def test_shipped_network_parameter_count(bundle, key, expected):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    with torch.device("meta"):
        network = parser.get_parsed_content(key)
    assert sum(p.numel() for p in network.parameters()) == expected
