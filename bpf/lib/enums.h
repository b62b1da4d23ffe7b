/* SPDX-License-Identifier: GPL-2.0 */
/* Shared-enum convention.
 *
 * Every enum that both the kernel program and Python use is written once, as
 * an X-macro list named MS_ENUM_<NAME>(X) whose entries are
 *     X(SYMBOL, value, KIND, "description")
 * C expands it into an enum here; datapath/enums.py reads the same lists out
 * of these headers, and tests/unit/test_enums.py compiles Python's view back
 * into C as static asserts, so the two sides cannot drift apart.
 * Values are ABI (counters are indexed by them and pinned maps outlive a
 * program build): append, never renumber.
 */
#ifndef MS_ENUMS_H
#define MS_ENUMS_H

#define MS_ENUM_MEMBER(sym, val, kind, desc) sym = val,
#define MS_ENUM_COUNT(sym, val, kind, desc) +1

#endif
