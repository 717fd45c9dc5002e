"Adversarial tests of release bundles: attacks, scenarios, truth and stored control bundles."
