"""Training and test data in the fastMRI brain layout: the HDF5 writer (:mod:`.fastmri_h5`), multi-coil simulation
from real magnitude volumes (:mod:`.simulate`), conversion of real raw k-space (:mod:`.raw_kspace`) and the DIRECT
dataset ``FastMRIReference`` (:mod:`.reference`), whose samples also carry another acquisition's image of the same
slice (MIAR's T1 -> T2 super-resolution)."""
