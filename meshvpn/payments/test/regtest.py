"""The one Monero regtest network the payments tests share (starting one costs ~20 s).

C{EXPECTED} is the number of tests, across modules, that use it: it stops
after the last of them (or at exit when only some ran).
"""

from meshvpn.tools.moneroregtest import SharedRegtest

EXPECTED = 4  # test_monero.RegtestTests (2) + test_regtest_payments (2)
SHARED = SharedRegtest(expected=EXPECTED)
