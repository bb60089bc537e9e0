"""The data layer: image files (image_files.py), MATLAB's bicubic downscaling (imresize.py), images as tensors
and their LR references (tensors.py), the training crops and their loader (crops.py), files of arrays that
readers memory-map (array_file.py), the decoded images kept between jobs (cache.py), one decoded copy of
the data per node (node_copy.py), and the codec between downscale and upscale (codec.py). It knows nothing of
the network or of training."""
