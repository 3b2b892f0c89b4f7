/*
 * etmemd_scan_export.h: what upstream's programs include to use libetmemd_scan.so (no GLib needed).
 * A header of upstream's name, so that code written for upstream's etmemd builds here
 * unchanged; everything is declared in etmem_engine.h.
 */
#ifndef ETMEMD_SCAN_EXPORT_H
#define ETMEMD_SCAN_EXPORT_H

#include "etmem_engine.h"

#endif
