"""The synthetic study: high-dimensional linear regression (n = 20, d = 200) trained over a λ grid."""
