"""U-Net trainers: the supervised MONAI U-Net (:mod:`.trainer`), its slice data and augmentation (:mod:`.data`),
the semi-supervised trainers Mean Teacher, UA-MT, CPS and FixMatch (:mod:`.semi_supervised`) and their shared
parts: ramps, noise, consistency losses (:mod:`.parts`)."""
