"""The demo's detection count (``pipelines.demo.nodule_detection``): a nodule is found only by a predicted connected
component whose centroid lies inside it, and components whose centroid lies in no annotated nodule are counted as
false positives. Every expected number below is worked out by hand from the voxel blocks and the grid."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.demo import Detection, nodule_detection, summary_line

UID_A, UID_B, UID_C = "1.2.840.1", "1.2.840.2", "1.2.840.3"

# scan A's grid: (x, y, z) = (24, 20, 10) voxels of 1.0 x 1.5 x 2.0 mm; the direction matrix swaps the in-plane axes
# and flips all three (rows: world x = -index y, world y = -index x, world z = -index z), so that
#   world = origin + direction @ (spacing * index) = (50 - 1.5 j, 40 - i, -20 - 2 k)   for voxel index (i, j, k)
SIZE_A = (24, 20, 10)
SPACING_A = (1.0, 1.5, 2.0)
ORIGIN_A = (50.0, 40.0, -20.0)
DIRECTION_A = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

# blocks of foreground voxels, as index ranges (i0, i1), (j0, j1), (k0, k1), inclusive; no two are 26-connected
CENTRED_IN_N1 = ((14, 16), (4, 6), (2, 4))  # centroid index (15, 5, 3) -> world (42.5, 25, -26) = N1's centre
TOUCHES_N2 = ((9, 14), (14, 14), (6, 6))  # a bar along i: voxel i = 9 is at world y = 31, 3 mm from N2's centre
#                                           (inside its 4 mm radius); centroid i = 11.5 -> world (29, 28.5, -32),
#                                           5.5 mm from N2's centre: outside, and 15 mm or more from N1 and N3
FAR_AWAY = ((1, 2), (17, 18), (0, 1))  # centroid (1.5, 17.5, 0.5) -> world (23.75, 38.5, -21): in no nodule
CENTRED_IN_N3 = ((19, 21), (2, 4), (7, 9))  # centroid (20, 3, 8) -> world (45.5, 20, -36) = N3's centre

NODULES = [  # seriesuid, world centre (mm), diameter (mm)
    (UID_A, (42.5, 25.0, -26.0), 10.0),  # N1: found (a component's centroid at its centre)
    (UID_A, (29.0, 34.0, -32.0), 8.0),  # N2, index (6, 14, 6): 8 mm counts (>= 8); only touched, so missed
    (UID_A, (45.5, 20.0, -36.0), 4.0),  # N3: under 8 mm, not counted, but its component is no false positive
    (UID_C, (0.0, 0.0, 0.0), 12.0),  # scan C has no prediction: its nodule is missed
]


def _prediction(path, size, spacing, origin, direction, blocks) -> None:
    array = np.zeros(size[::-1], dtype=np.uint8)  # SimpleITK arrays are (z, y, x)
    for (i0, i1), (j0, j1), (k0, k1) in blocks:
        array[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = 1
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


@pytest.fixture
def dataset(tmp_path):
    """Three scans in the LUNA16 layout (only their names are read), the annotations, and hand-placed predictions:
    scan A (flipped axes) with four components, scan B (no nodule) with one, scan C without a prediction."""
    data, predictions = tmp_path / "LUNA16", tmp_path / "predictions"
    (data / "subset0").mkdir(parents=True)
    predictions.mkdir()
    for uid in (UID_A, UID_B, UID_C):
        sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(data / "subset0" / f"{uid}.mhd"))
    with (data / "annotations.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        writer.writerows([uid, *centre, diameter] for uid, centre, diameter in NODULES)
    _prediction(predictions / f"{UID_A}_seg.nii.gz", SIZE_A, SPACING_A, ORIGIN_A, DIRECTION_A,
                [CENTRED_IN_N1, TOUCHES_N2, FAR_AWAY, CENTRED_IN_N3])
    # B: two cubes that meet at one corner only, one 26-connected component (6-connectivity would make it two)
    _prediction(predictions / f"{UID_B}_seg.nii.gz", (8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), [((2, 3), (2, 3), (2, 3)), ((4, 5), (4, 5), (4, 5))])
    return data, predictions


def test_found_needs_a_centroid_inside_and_false_positives_are_counted(dataset):
    """N1 found, N2 (touched only) and scan C's nodule missed: 1 of 3. False positives: the touching bar and the far
    block in A, the corner-joined cubes in B: 3 on the 2 scans with a prediction. Were any touching voxel enough, N2
    would be found (2/3); were the direction matrix ignored (or transposed), A's centroids would land elsewhere and find
    nothing."""
    detection = nodule_detection(*dataset)
    assert detection == Detection(found=1, total=3, false_positives=3, scans=2)
    assert detection.false_positives_per_scan == 1.5


def test_a_component_that_touches_counts_once_it_is_moved_inside(dataset):
    """Moving the bar so that its centroid is inside N2: i = 4..9 has centroid i = 6.5 -> world y = 33.5, 0.5 mm from
    N2's centre. Both big nodules of A are found and the bar is no longer a false positive."""
    data, predictions = dataset
    moved = ((4, 9), (14, 14), (6, 6))
    _prediction(predictions / f"{UID_A}_seg.nii.gz", SIZE_A, SPACING_A, ORIGIN_A, DIRECTION_A,
                [CENTRED_IN_N1, moved, FAR_AWAY, CENTRED_IN_N3])
    assert nodule_detection(data, predictions) == Detection(found=2, total=3, false_positives=2, scans=2)


def test_the_minimum_diameter_selects_the_counted_nodules(dataset):
    """With a 3 mm minimum N3 (4 mm, centroid at its centre) counts too: 2 of 4; false positives do not change."""
    assert nodule_detection(*dataset, min_diameter_mm=3.0) == Detection(found=2, total=4, false_positives=3, scans=2)


def test_summary_line_reports_found_and_false_positives_per_scan():
    line = summary_line({"best_metric": 0.51234, "best_metric_epoch": 7}, 0.4321, Detection(1, 3, 3, 2), 61.4)
    assert line == ("demo: lung_nodule_ct_edu_segmentation val_mean_dice=0.5123 (epoch 7) test_mean_dice=0.4321 "
                    "nodules_8mm_found=1/3 false_positives_per_scan=1.50 time=61s")
