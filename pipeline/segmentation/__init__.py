"""Final segmentation model via mmsegmentation (DeepLabV3+/v2, Mask2Former).

Import ``pipeline.segmentation.mmcv_compat`` (or any module here) before
mmseg/mmdet: with mmcv-lite it installs the stand-in ``mmcv._ext``."""
