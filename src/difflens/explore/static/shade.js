// How a token is shaded under a statistic (the stored and the live token views).

// Intensity in [0, 1]: how much a token stands out under the statistic.
function intensity(stat, v, scale) {
  if (v === null || typeof v !== 'number') return 0;
  if (stat === 'logprob') return Math.min(1, -v / scale);
  return Math.min(1, Math.abs(v) / scale);
}
function colour(stat, v, a) {
  if (stat === 'logprob_diff' && v < 0) return `rgba(33, 102, 172, ${a.toFixed(3)})`;
  return `rgba(214, 39, 40, ${a.toFixed(3)})`;
}
