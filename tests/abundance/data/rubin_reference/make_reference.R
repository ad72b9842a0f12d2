# Reference values for tests/abundance/test_draws.py::test_rubin_rules_agree_with_mice:
# Rubin's rules with Barnard-Rubin degrees of freedom as mice pools a scalar.
#   Rscript make_reference.R > reference.json   (mice 3.15, Debian r-cran-mice)
library(mice)
cases <- list(
  list(Q = c(0.81, 0.74, 0.92, 0.69, 0.85), U = c(0.090, 0.085, 0.101, 0.080, 0.094), dfcom = 20),
  list(Q = c(0.81, 0.74, 0.92, 0.69, 0.85), U = c(0.090, 0.085, 0.101, 0.080, 0.094), dfcom = Inf),
  list(Q = c(-0.20, -0.35, -0.05, -0.41, -0.12, -0.30, -0.22, -0.18, -0.27, -0.09),
       U = rep(0.012, 10), dfcom = 57),
  list(Q = c(1.5, 1.5001, 1.4999), U = c(0.2, 0.2, 0.2), dfcom = Inf)
)
out <- lapply(cases, function(cs) {
  n <- if (is.finite(cs$dfcom)) cs$dfcom + 1 else Inf
  p <- pool.scalar(cs$Q, cs$U, n = n, k = 1, rule = "rubin1987")
  list(Q = cs$Q, U = cs$U, dfcom = if (is.finite(cs$dfcom)) cs$dfcom else NULL,
       qbar = p$qbar, t = p$t, df = p$df, lambda = (1 + 1 / p$m) * p$b / p$t)
})
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA, null = "null"))
