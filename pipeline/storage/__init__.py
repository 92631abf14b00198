"""Storage drivers: one contract (`driver.StorageDriver`), several backends."""
