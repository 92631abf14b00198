"""Storage: the drivers (one contract, `driver.StorageDriver`, several backends) and the
on-disk layout every store writes through (`paths`, the distribution-compatible tree).
"""
