/*
 * Unit tests for nn_unicode: the generated tables against facts sampled
 * straight from Python's unicodedata (not through the generator), exhaustive
 * properties over the whole code space, and UTF-8 decoding of every class of
 * invalid input, with inputs placed against an unreadable page so any
 * over-read faults.
 */
#include "nn/nn_unicode.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ========================================================================
 * Facts
 * ======================================================================== */

typedef struct cat_fact {
    uint32_t cp;
    nn_uc_cat cat;
} cat_fact;

/* Sampled from Python 3.11's unicodedata (Unicode 14.0.0): up to 8 random
 * code points of every category plus its first and last, and block edges. */
static const cat_fact cat_facts[] = {
    {0x0,NN_UC_Cc},{0x5,NN_UC_Cc},{0x10,NN_UC_Cc},{0x15,NN_UC_Cc},{0x1E,NN_UC_Cc},
    {0x1F,NN_UC_Cc},{0x20,NN_UC_Zs},{0x21,NN_UC_Po},{0x24,NN_UC_Sc},{0x28,NN_UC_Ps},
    {0x29,NN_UC_Pe},{0x2B,NN_UC_Sm},{0x2D,NN_UC_Pd},{0x30,NN_UC_Nd},{0x3C,NN_UC_Sm},
    {0x41,NN_UC_Lu},{0x5E,NN_UC_Sk},{0x5F,NN_UC_Pc},{0x61,NN_UC_Ll},{0x7B,NN_UC_Ps},
    {0x7D,NN_UC_Pe},{0x7F,NN_UC_Cc},{0x80,NN_UC_Cc},{0x90,NN_UC_Cc},{0x92,NN_UC_Cc},
    {0x95,NN_UC_Cc},{0x9F,NN_UC_Cc},{0xA0,NN_UC_Zs},{0xA6,NN_UC_So},{0xAA,NN_UC_Lo},
    {0xAB,NN_UC_Pi},{0xAD,NN_UC_Cf},{0xB2,NN_UC_No},{0xB4,NN_UC_Sk},{0xBB,NN_UC_Pf},
    {0xFF,NN_UC_Ll},{0x100,NN_UC_Lu},{0x1B1,NN_UC_Lu},{0x1C5,NN_UC_Lt},{0x1FF,NN_UC_Ll},
    {0x200,NN_UC_Lu},{0x2B0,NN_UC_Lm},{0x2B5,NN_UC_Lm},{0x2EC,NN_UC_Lm},{0x2F4,NN_UC_Sk},
    {0x2FE,NN_UC_Sk},{0x300,NN_UC_Mn},{0x378,NN_UC_Cn},{0x488,NN_UC_Me},{0x489,NN_UC_Me},
    {0x4D5,NN_UC_Ll},{0x659,NN_UC_Mn},{0x903,NN_UC_Mc},{0x9FB,NN_UC_Sc},{0xBE7,NN_UC_Nd},
    {0xBF9,NN_UC_Sc},{0xC43,NN_UC_Mc},{0xC6A,NN_UC_Nd},{0xD6A,NN_UC_Nd},{0x104A,NN_UC_Po},
    {0x13AF,NN_UC_Lu},{0x1400,NN_UC_Pd},{0x16EE,NN_UC_Nl},{0x17DB,NN_UC_Sc},{0x180E,NN_UC_Cf},
    {0x19D3,NN_UC_Nd},{0x1ABE,NN_UC_Me},{0x1BA6,NN_UC_Mc},{0x1BB0,NN_UC_Nd},{0x1C58,NN_UC_Nd},
    {0x1C7D,NN_UC_Lm},{0x1C92,NN_UC_Lu},{0x1CAA,NN_UC_Lu},{0x1D3F,NN_UC_Lm},{0x1D41,NN_UC_Lm},
    {0x1DA8,NN_UC_Lm},{0x1DDB,NN_UC_Mn},{0x1F77,NN_UC_Ll},{0x1F88,NN_UC_Lt},{0x1F8C,NN_UC_Lt},
    {0x1F8F,NN_UC_Lt},{0x1F9C,NN_UC_Lt},{0x1FA8,NN_UC_Lt},{0x1FAD,NN_UC_Lt},{0x1FAE,NN_UC_Lt},
    {0x1FFC,NN_UC_Lt},{0x2000,NN_UC_Zs},{0x2002,NN_UC_Zs},{0x2003,NN_UC_Zs},{0x2005,NN_UC_Zs},
    {0x2008,NN_UC_Zs},{0x2012,NN_UC_Pd},{0x2013,NN_UC_Pd},{0x2019,NN_UC_Pf},{0x201C,NN_UC_Pi},
    {0x201D,NN_UC_Pf},{0x201F,NN_UC_Pi},{0x2028,NN_UC_Zl},{0x2029,NN_UC_Zp},{0x202F,NN_UC_Zs},
    {0x2039,NN_UC_Pi},{0x2040,NN_UC_Pc},{0x2045,NN_UC_Ps},{0x2054,NN_UC_Pc},{0x205F,NN_UC_Zs},
    {0x2062,NN_UC_Cf},{0x206A,NN_UC_Cf},{0x206D,NN_UC_Cf},{0x2083,NN_UC_No},{0x20A0,NN_UC_Sc},
    {0x20A5,NN_UC_Sc},{0x20B0,NN_UC_Sc},{0x20B6,NN_UC_Sc},{0x20BB,NN_UC_Sc},{0x20DD,NN_UC_Me},
    {0x20DE,NN_UC_Me},{0x20E2,NN_UC_Me},{0x20E3,NN_UC_Me},{0x20E4,NN_UC_Me},{0x2164,NN_UC_Nl},
    {0x217A,NN_UC_Nl},{0x217B,NN_UC_Nl},{0x2188,NN_UC_Nl},{0x219B,NN_UC_Sm},{0x225D,NN_UC_Sm},
    {0x2293,NN_UC_Sm},{0x22B3,NN_UC_Sm},{0x22C8,NN_UC_Sm},{0x2495,NN_UC_No},{0x2770,NN_UC_Ps},
    {0x283C,NN_UC_So},{0x2991,NN_UC_Ps},{0x2994,NN_UC_Pe},{0x2A9C,NN_UC_Sm},{0x2B30,NN_UC_Sm},
    {0x2B9A,NN_UC_So},{0x2C72,NN_UC_Lu},{0x2CB1,NN_UC_Ll},{0x2DE5,NN_UC_Mn},{0x2E03,NN_UC_Pf},
    {0x2E05,NN_UC_Pf},{0x2E06,NN_UC_Po},{0x2E09,NN_UC_Pi},{0x2E0A,NN_UC_Pf},{0x2E0C,NN_UC_Pi},
    {0x2E0D,NN_UC_Pf},{0x2E1A,NN_UC_Pd},{0x2E1C,NN_UC_Pi},{0x2E1D,NN_UC_Pf},{0x2E20,NN_UC_Pi},
    {0x2E21,NN_UC_Pf},{0x2E39,NN_UC_Po},{0x2E3B,NN_UC_Pd},{0x2E40,NN_UC_Pd},{0x2E58,NN_UC_Pe},
    {0x3000,NN_UC_Zs},{0x3009,NN_UC_Pe},{0x3011,NN_UC_Pe},{0x3016,NN_UC_Ps},{0x3019,NN_UC_Pe},
    {0x30A0,NN_UC_Pd},{0x30D0,NN_UC_Lo},{0x4E00,NN_UC_Lo},{0x4FBB,NN_UC_Lo},{0x8DCA,NN_UC_Lo},
    {0x9FFF,NN_UC_Lo},{0xA670,NN_UC_Me},{0xA672,NN_UC_Me},{0xA701,NN_UC_Sk},{0xA716,NN_UC_Sk},
    {0xAB41,NN_UC_Ll},{0xAB5B,NN_UC_Sk},{0xAC00,NN_UC_Lo},{0xB558,NN_UC_Lo},{0xD59B,NN_UC_Lo},
    {0xD7A3,NN_UC_Lo},{0xD7A4,NN_UC_Cn},{0xD800,NN_UC_Cs},{0xD8D0,NN_UC_Cs},{0xD9B3,NN_UC_Cs},
    {0xDA02,NN_UC_Cs},{0xDC1B,NN_UC_Cs},{0xDDE5,NN_UC_Cs},{0xDE16,NN_UC_Cs},{0xDECC,NN_UC_Cs},
    {0xDF28,NN_UC_Cs},{0xDFFF,NN_UC_Cs},{0xE000,NN_UC_Co},{0xF8FF,NN_UC_Co},{0xFBC0,NN_UC_Sk},
    {0xFE10,NN_UC_Po},{0xFE33,NN_UC_Pc},{0xFE34,NN_UC_Pc},{0xFE35,NN_UC_Ps},{0xFE36,NN_UC_Pe},
    {0xFE4D,NN_UC_Pc},{0xFE4E,NN_UC_Pc},{0xFE4F,NN_UC_Pc},{0xFE5B,NN_UC_Ps},{0xFE5D,NN_UC_Ps},
    {0xFE63,NN_UC_Pd},{0xFF09,NN_UC_Pe},{0xFF3E,NN_UC_Sk},{0xFF3F,NN_UC_Pc},{0xFF62,NN_UC_Ps},
    {0xFF63,NN_UC_Pe},{0xFFFF,NN_UC_Cn},{0x10000,NN_UC_Lo},{0x10146,NN_UC_Nl},{0x10168,NN_UC_Nl},
    {0x1043D,NN_UC_Ll},{0x107AF,NN_UC_Lm},{0x109D2,NN_UC_No},{0x10A7E,NN_UC_No},{0x10E69,NN_UC_No},
    {0x10E72,NN_UC_No},{0x10EAD,NN_UC_Pd},{0x11065,NN_UC_No},{0x1134B,NN_UC_Mc},{0x11363,NN_UC_Mc},
    {0x1136A,NN_UC_Mn},{0x115BE,NN_UC_Mc},{0x115D1,NN_UC_Po},{0x11631,NN_UC_Mc},{0x1163B,NN_UC_Mc},
    {0x1163D,NN_UC_Mn},{0x11666,NN_UC_Po},{0x118C6,NN_UC_Ll},{0x118D1,NN_UC_Ll},{0x118E6,NN_UC_Nd},
    {0x11940,NN_UC_Mc},{0x11C52,NN_UC_Nd},{0x12432,NN_UC_Nl},{0x12440,NN_UC_Nl},{0x1246E,NN_UC_Nl},
    {0x124B6,NN_UC_Lo},{0x13436,NN_UC_Cf},{0x16E5B,NN_UC_Lu},{0x16E96,NN_UC_No},{0x1BCA0,NN_UC_Cf},
    {0x1D172,NN_UC_Mc},{0x1D541,NN_UC_Lu},{0x1D543,NN_UC_Lu},{0x1D5F8,NN_UC_Ll},{0x1DA89,NN_UC_Po},
    {0x1E921,NN_UC_Lu},{0x1E943,NN_UC_Ll},{0x1E94B,NN_UC_Lm},{0x1E95F,NN_UC_Po},{0x1ECB0,NN_UC_Sc},
    {0x1EEF1,NN_UC_Sm},{0x1F03A,NN_UC_So},{0x1F10C,NN_UC_No},{0x1F3FF,NN_UC_Sk},{0x1F42D,NN_UC_So},
    {0x1F5BC,NN_UC_So},{0x1F600,NN_UC_So},{0x1F64F,NN_UC_So},{0x1F96F,NN_UC_So},{0x1F9F2,NN_UC_So},
    {0x1FB2D,NN_UC_So},{0x1FBCA,NN_UC_So},{0x1FBF9,NN_UC_Nd},{0x1FFFF,NN_UC_Cn},{0x20000,NN_UC_Lo},
    {0x2403A,NN_UC_Lo},{0x2A6DF,NN_UC_Lo},{0x2A6E0,NN_UC_Cn},{0x2C520,NN_UC_Lo},{0x3134A,NN_UC_Lo},
    {0x40ABA,NN_UC_Cn},{0x6489B,NN_UC_Cn},{0x6ABA5,NN_UC_Cn},{0xAC435,NN_UC_Cn},{0xC2FCC,NN_UC_Cn},
    {0xCC3EC,NN_UC_Cn},{0xD92F3,NN_UC_Cn},{0xE0000,NN_UC_Cn},{0xE0001,NN_UC_Cf},{0xE0059,NN_UC_Cf},
    {0xE007F,NN_UC_Cf},{0xE0100,NN_UC_Mn},{0xE014D,NN_UC_Mn},{0xE017D,NN_UC_Mn},{0xE01CB,NN_UC_Mn},
    {0xE01EF,NN_UC_Mn},{0xE6BCC,NN_UC_Cn},{0xEFFFF,NN_UC_Cn},{0xF0000,NN_UC_Co},{0xF4349,NN_UC_Co},
    {0xF6AF6,NN_UC_Co},{0xF7D00,NN_UC_Co},{0xF7D13,NN_UC_Co},{0xF9706,NN_UC_Co},{0xFCAA6,NN_UC_Co},
    {0x1093C2,NN_UC_Co},{0x10AE8A,NN_UC_Co},{0x10FFFD,NN_UC_Co},{0x10FFFE,NN_UC_Cn},{0x10FFFF,NN_UC_Cn},
};

typedef struct map_fact {
    uint32_t cp;
    size_t n;
    uint32_t to[4];
} map_fact;

/* chr(cp).lower() for a sample (Python 3.11, Unicode 14.0.0). */
static const map_fact lower_facts[] = {
    {0x41,1,{0x61}},{0x42,1,{0x62}},{0x4A,1,{0x6A}},{0x50,1,{0x70}},
    {0x5A,1,{0x7A}},{0x61,1,{0x61}},{0xC0,1,{0xE0}},{0xC9,1,{0xE9}},
    {0xCE,1,{0xEE}},{0xDB,1,{0xFB}},{0xDE,1,{0xFE}},{0xDF,1,{0xDF}},
    {0x106,1,{0x107}},{0x10C,1,{0x10D}},{0x130,2,{0x69,0x307}},{0x131,1,{0x131}},
    {0x147,1,{0x148}},{0x14E,1,{0x14F}},{0x164,1,{0x165}},{0x178,1,{0xFF}},
    {0x18B,1,{0x18C}},{0x1A0,1,{0x1A1}},{0x1A2,1,{0x1A3}},{0x1A6,1,{0x280}},
    {0x1C5,1,{0x1C6}},{0x1C7,1,{0x1C9}},{0x1D7,1,{0x1D8}},{0x216,1,{0x217}},
    {0x376,1,{0x377}},{0x38E,1,{0x3CD}},{0x3A0,1,{0x3C0}},{0x3A3,1,{0x3C3}},
    {0x3F4,1,{0x3B8}},{0x3FD,1,{0x37B}},{0x417,1,{0x437}},{0x48C,1,{0x48D}},
    {0x502,1,{0x503}},{0x53C,1,{0x56C}},{0x548,1,{0x578}},{0x10AD,1,{0x2D0D}},
    {0x10CD,1,{0x2D2D}},{0x13A3,1,{0xAB73}},{0x13A7,1,{0xAB77}},{0x13C3,1,{0xAB93}},
    {0x13CE,1,{0xAB9E}},{0x13E4,1,{0xABB4}},{0x1C95,1,{0x10D5}},{0x1C9B,1,{0x10DB}},
    {0x1CAE,1,{0x10EE}},{0x1CB9,1,{0x10F9}},{0x1E26,1,{0x1E27}},{0x1E52,1,{0x1E53}},
    {0x1E6E,1,{0x1E6F}},{0x1E86,1,{0x1E87}},{0x1EAC,1,{0x1EAD}},{0x1EC0,1,{0x1EC1}},
    {0x1EDE,1,{0x1EDF}},{0x1F0E,1,{0x1F06}},{0x1F1B,1,{0x1F13}},{0x1F2C,1,{0x1F24}},
    {0x1F38,1,{0x1F30}},{0x1F89,1,{0x1F81}},{0x1FAB,1,{0x1FA3}},{0x1FF9,1,{0x1F79}},
    {0x2126,1,{0x3C9}},{0x212A,1,{0x6B}},{0x2160,1,{0x2170}},{0x2168,1,{0x2178}},
    {0x24C5,1,{0x24DF}},{0x24CE,1,{0x24E8}},{0x2C04,1,{0x2C34}},{0x2C0C,1,{0x2C3C}},
    {0x2C64,1,{0x27D}},{0x2C6B,1,{0x2C6C}},{0x2CD6,1,{0x2CD7}},{0xA660,1,{0xA661}},
    {0xA73A,1,{0xA73B}},{0xA74C,1,{0xA74D}},{0xA792,1,{0xA793}},{0xA7AC,1,{0x261}},
    {0xA7C7,1,{0xA7C8}},{0xED60,1,{0xED60}},{0xFF2E,1,{0xFF4E}},{0x10400,1,{0x10428}},
    {0x10408,1,{0x10430}},{0x1040A,1,{0x10432}},{0x10417,1,{0x1043F}},{0x10421,1,{0x10449}},
    {0x104B2,1,{0x104DA}},{0x104B6,1,{0x104DE}},{0x104C2,1,{0x104EA}},{0x10C9E,1,{0x10CDE}},
    {0x10CA5,1,{0x10CE5}},{0x10CA6,1,{0x10CE6}},{0x10CA7,1,{0x10CE7}},{0x10CA8,1,{0x10CE8}},
    {0x10CAA,1,{0x10CEA}},{0x118A9,1,{0x118C9}},{0x118AA,1,{0x118CA}},{0x16E41,1,{0x16E61}},
    {0x16E52,1,{0x16E72}},{0x16E59,1,{0x16E79}},{0x16E5A,1,{0x16E7A}},{0x16E5B,1,{0x16E7B}},
    {0x1A3A2,1,{0x1A3A2}},{0x1E921,1,{0x1E943}},{0x1E922,1,{0x1E922}},{0x2377F,1,{0x2377F}},
    {0x26964,1,{0x26964}},{0x26E30,1,{0x26E30}},{0x2ED28,1,{0x2ED28}},{0x376E8,1,{0x376E8}},
    {0x3E301,1,{0x3E301}},{0x5E874,1,{0x5E874}},{0x619FC,1,{0x619FC}},{0x6468D,1,{0x6468D}},
    {0x68328,1,{0x68328}},{0x72313,1,{0x72313}},{0x73A40,1,{0x73A40}},{0x79387,1,{0x79387}},
    {0x7DAB4,1,{0x7DAB4}},{0x7EC4D,1,{0x7EC4D}},{0x831D2,1,{0x831D2}},{0x916C6,1,{0x916C6}},
    {0xBAC71,1,{0xBAC71}},{0xBF51D,1,{0xBF51D}},{0xC5665,1,{0xC5665}},{0xC7273,1,{0xC7273}},
    {0xD98D5,1,{0xD98D5}},{0xE8A42,1,{0xE8A42}},{0xEBCDF,1,{0xEBCDF}},{0xEC79B,1,{0xEC79B}},
    {0xF2A93,1,{0xF2A93}},{0xF43AE,1,{0xF43AE}},{0x10A921,1,{0x10A921}},
};

/* unicodedata.normalize('NFD', chr(cp)) for a sample. */
static const map_fact nfd_facts[] = {
    {0x41,1,{0x41}},{0xC0,2,{0x41,0x300}},{0xC5,2,{0x41,0x30A}},{0xE9,2,{0x65,0x301}},
    {0x231,3,{0x6F,0x307,0x304}},{0x344,2,{0x308,0x301}},{0x3D3,2,{0x3D2,0x301}},{0xF52,2,{0xF51,0xFB7}},
    {0xF73,2,{0xF71,0xF72}},{0x1100,1,{0x1100}},{0x1E0A,2,{0x44,0x307}},{0x1E54,2,{0x50,0x301}},
    {0x1E9B,2,{0x17F,0x307}},{0x1EF7,2,{0x79,0x309}},{0x1F86,4,{0x3B1,0x313,0x342,0x345}},{0x1FAA,4,{0x3A9,0x313,0x300,0x345}},
    {0x1FB7,3,{0x3B1,0x342,0x345}},{0x2126,1,{0x3A9}},{0x212B,2,{0x41,0x30A}},{0x226D,2,{0x224D,0x338}},
    {0x30B0,2,{0x30AF,0x3099}},{0xAC00,2,{0x1100,0x1161}},{0xAC01,3,{0x1100,0x1161,0x11A8}},{0xAC5A,3,{0x1100,0x1164,0x11AD}},
    {0xAD03,3,{0x1100,0x116A,0x11AE}},{0xAF29,3,{0x1101,0x1168,0x11C0}},{0xAF45,3,{0x1101,0x1169,0x11C0}},{0xAF51,3,{0x1101,0x116A,0x11B0}},
    {0xAF6A,3,{0x1101,0x116B,0x11AD}},{0xB081,3,{0x1101,0x1175,0x11AC}},{0xB087,3,{0x1101,0x1175,0x11B2}},{0xB09E,3,{0x1102,0x1161,0x11AD}},
    {0xB1F6,3,{0x1102,0x116D,0x11B5}},{0xB318,3,{0x1103,0x1162,0x11BF}},{0xB343,3,{0x1103,0x1164,0x11B2}},{0xB358,3,{0x1103,0x1165,0x11AB}},
    {0xB374,3,{0x1103,0x1166,0x11AB}},{0xB4D0,3,{0x1103,0x1172,0x11B7}},{0xB4DD,3,{0x1103,0x1173,0x11A8}},{0xB57F,3,{0x1104,0x1163,0x11BE}},
    {0xB60D,3,{0x1104,0x1168,0x11C0}},{0xB693,3,{0x1104,0x116D,0x11BA}},{0xB6B2,3,{0x1104,0x116E,0x11BD}},{0xB791,3,{0x1105,0x1161,0x11BC}},
    {0xB7E0,3,{0x1105,0x1164,0x11B7}},{0xB987,3,{0x1105,0x1173,0x11BA}},{0xB9B2,3,{0x1105,0x1175,0x11AD}},{0xBA19,3,{0x1106,0x1163,0x11C0}},
    {0xBB07,3,{0x1106,0x116C,0x11B2}},{0xBB54,3,{0x1106,0x116F,0x11AB}},{0xBB9C,3,{0x1106,0x1171,0x11BB}},{0xBBA3,3,{0x1106,0x1171,0x11C2}},
    {0xBBBA,3,{0x1106,0x1172,0x11BD}},{0xBBE4,3,{0x1106,0x1174,0x11AF}},{0xBBFA,3,{0x1106,0x1175,0x11A9}},{0xBD78,3,{0x1107,0x116D,0x11BB}},
    {0xBD8E,3,{0x1107,0x116E,0x11B5}},{0xBE64,3,{0x1108,0x1161,0x11AB}},{0xBE84,3,{0x1108,0x1162,0x11AF}},{0xBE96,3,{0x1108,0x1162,0x11C1}},
    {0xBEA7,3,{0x1108,0x1163,0x11B6}},{0xBF75,3,{0x1108,0x116A,0x11C0}},{0xBFB6,3,{0x1108,0x116D,0x11AD}},{0xC0CC,3,{0x1109,0x1162,0x11AB}},
    {0xC0EC,3,{0x1109,0x1163,0x11AF}},{0xC1E0,2,{0x1109,0x116C}},{0xC3C2,3,{0x110A,0x1168,0x11AD}},{0xC428,3,{0x110A,0x116B,0x11BF}},
    {0xC45D,3,{0x110A,0x116D,0x11BC}},{0xC598,2,{0x110B,0x1164}},{0xC686,3,{0x110B,0x116C,0x11B5}},{0xC690,3,{0x110B,0x116C,0x11BF}},
    {0xC735,3,{0x110B,0x1172,0x11BC}},{0xC7F6,3,{0x110C,0x1164,0x11B9}},{0xC88E,3,{0x110C,0x116A,0x11A9}},{0xC8E0,2,{0x110C,0x116D}},
    {0xC971,3,{0x110C,0x1172,0x11AC}},{0xC97F,3,{0x110C,0x1172,0x11BA}},{0xCA42,3,{0x110D,0x1164,0x11B9}},{0xCA49,3,{0x110D,0x1164,0x11C0}},
    {0xCAFF,3,{0x110D,0x116B,0x11B2}},{0xCBA8,3,{0x110D,0x1171,0x11B3}},{0xCDC2,3,{0x110E,0x116F,0x11B9}},{0xCDEB,3,{0x110E,0x1171,0x11AA}},
    {0xCE23,3,{0x110E,0x1173,0x11AA}},{0xCEBC,3,{0x110F,0x1163,0x11B7}},{0xCED2,3,{0x110F,0x1164,0x11B1}},{0xCF1E,3,{0x110F,0x1167,0x11A9}},
    {0xD0BB,3,{0x110F,0x1175,0x11BE}},{0xD0BF,3,{0x110F,0x1175,0x11C2}},{0xD0D7,3,{0x1110,0x1161,0x11BE}},{0xD307,3,{0x1110,0x1175,0x11BE}},
    {0xD3B6,3,{0x1111,0x1167,0x11A9}},{0xD3C7,3,{0x1111,0x1167,0x11BA}},{0xD533,3,{0x1111,0x1174,0x11BA}},{0xD762,3,{0x1112,0x1173,0x11B9}},
    {0xD769,3,{0x1112,0x1173,0x11C0}},{0xD7A3,3,{0x1112,0x1175,0x11C2}},{0xF9BF,1,{0x6A02}},{0xFA67,1,{0x9038}},
    {0xFAC7,1,{0x96E3}},{0xFACF,1,{0x2284A}},{0x1D160,3,{0x1D158,0x1D165,0x1D16E}},{0x2F806,1,{0x4FBB}},
    {0x2F922,1,{0x7250}},{0x2F97B,1,{0x264DA}},{0x2FA1D,1,{0x2A600}},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

Test(unicode, version)
{
    cr_assert_str_eq(NN_UNICODE_VERSION, "14.0.0");
}

Test(unicode, category_facts)
{
    cr_assert_geq(COUNT(cat_facts), 250);
    for (size_t i = 0; i < COUNT(cat_facts); i++)
        cr_expect_eq(nn_uc_category(cat_facts[i].cp), cat_facts[i].cat, "U+%04X: %d, want %d",
                     cat_facts[i].cp, nn_uc_category(cat_facts[i].cp), cat_facts[i].cat);
}

Test(unicode, category_classes)
{
    cr_assert(nn_uc_is_letter('a'));
    cr_assert(nn_uc_is_letter(0x00E9));  /* é */
    cr_assert(nn_uc_is_letter(0x4E2D));  /* 中 */
    cr_assert(nn_uc_is_letter(0x02B0));  /* ʰ Lm */
    cr_assert(nn_uc_is_letter(0x01C5));  /* ǅ Lt */
    cr_assert_not(nn_uc_is_letter('1'));
    cr_assert_not(nn_uc_is_letter(0x0301)); /* combining acute: Mn */
    cr_assert(nn_uc_is_mark(0x0301));
    cr_assert(nn_uc_is_mark(0x0903));    /* Mc */
    cr_assert(nn_uc_is_mark(0x20DD));    /* Me */
    cr_assert(nn_uc_is_number('7'));
    cr_assert(nn_uc_is_number(0x0663));  /* Arabic-Indic 3 */
    cr_assert(nn_uc_is_number(0x00B2));  /* ² No */
    cr_assert(nn_uc_is_number(0x2167));  /* Ⅷ Nl */
    cr_assert(nn_uc_is_number(0x00BD));  /* ½ */
    cr_assert_not(nn_uc_is_number('x'));
    cr_assert(nn_uc_is_punct('!'));
    cr_assert(nn_uc_is_punct('_'));      /* Pc */
    cr_assert(nn_uc_is_punct(0x00AB));   /* « Pi */
    cr_assert(nn_uc_is_punct(0x3002));   /* 。 */
    cr_assert_not(nn_uc_is_punct('$'));
    cr_assert(nn_uc_is_symbol('$'));
    cr_assert(nn_uc_is_symbol('+'));
    cr_assert(nn_uc_is_symbol('^'));     /* Sk */
    cr_assert(nn_uc_is_symbol(0x1F600)); /* 😀 So */
    cr_assert_not(nn_uc_is_symbol('a'));
    cr_assert_eq(nn_uc_category(0x0378), NN_UC_Cn); /* unassigned Greek gap */
    cr_assert_eq(nn_uc_category(0xD800), NN_UC_Cs);
    cr_assert_eq(nn_uc_category(0xE000), NN_UC_Co);
    cr_assert_eq(nn_uc_category(0x200B), NN_UC_Cf); /* ZWSP is not a space */
    cr_assert_eq(nn_uc_category(0x110000), NN_UC_Cn);
    cr_assert_eq(nn_uc_category(0xFFFFFFFFu), NN_UC_Cn);
}

/* The White_Space property, exhaustively, against PropList's list. */
Test(unicode, white_space_exhaustive)
{
    static const uint32_t ws[][2] = {{0x09, 0x0D}, {0x20, 0x20}, {0x85, 0x85}, {0xA0, 0xA0},
                                     {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
                                     {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};
    size_t n = 0;
    for (uint32_t cp = 0; cp <= 0x110000; cp++) {
        bool want = false;
        for (size_t i = 0; i < COUNT(ws); i++)
            want = want || (cp >= ws[i][0] && cp <= ws[i][1]);
        cr_assert_eq(nn_uc_is_space(cp), want, "U+%04X", cp);
        n += want;
    }
    cr_assert_eq(n, 25);
    cr_assert_not(nn_uc_is_space(0x1C)); /* Python's isspace() says yes; White_Space no */
    cr_assert_not(nn_uc_is_space(0x200B));
    cr_assert_not(nn_uc_is_space(0xFEFF));
}

static void check_map(const char *what, size_t (*fn)(uint32_t, uint32_t *), const map_fact *f,
                      size_t count)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t out[4] = {0};
        size_t n = fn(f[i].cp, out);
        cr_expect_eq(n, f[i].n, "%s U+%04X: %zu code points, want %zu", what, f[i].cp, n, f[i].n);
        for (size_t k = 0; k < n && k < f[i].n; k++)
            cr_expect_eq(out[k], f[i].to[k], "%s U+%04X [%zu]: U+%04X, want U+%04X", what,
                         f[i].cp, k, out[k], f[i].to[k]);
    }
}

static size_t lower4(uint32_t cp, uint32_t *out) { return nn_uc_lower(cp, out); }
static size_t nfd4(uint32_t cp, uint32_t *out) { return nn_uc_nfd(cp, out); }

Test(unicode, lower_facts)
{
    check_map("lower", lower4, lower_facts, COUNT(lower_facts));
    uint32_t out[3];
    cr_assert_eq(nn_uc_lower(0x0130, out), 2); /* İ -> i + combining dot above */
    cr_assert_eq(out[0], 'i');
    cr_assert_eq(out[1], 0x0307);
    cr_assert_eq(nn_uc_lower(0x00DF, out), 1); /* ß lowercase is itself */
    cr_assert_eq(out[0], 0x00DF);
    cr_assert_eq(nn_uc_lower(0x03A3, out), 1); /* Σ -> σ (no context: not final) */
    cr_assert_eq(out[0], 0x03C3);
    cr_assert_eq(nn_uc_lower(0x212A, out), 1); /* Kelvin sign -> k */
    cr_assert_eq(out[0], 'k');
    cr_assert_eq(nn_uc_lower(0x110000, out), 1);
    cr_assert_eq(out[0], 0x110000);
}

Test(unicode, nfd_facts)
{
    check_map("nfd", nfd4, nfd_facts, COUNT(nfd_facts));
}

/* Every code point: mappings stay in range, NFD is fully decomposed (each
 * output is its own NFD) and Hangul syllables match the arithmetic. */
Test(unicode, mappings_exhaustive)
{
    size_t n_lower = 0, n_nfd = 0, max_nfd = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        uint32_t lo[3], d[NN_UC_MAX_DECOMP];
        size_t n = nn_uc_lower(cp, lo);
        cr_assert(n >= 1 && n <= 3, "U+%04X", cp);
        n_lower += (n != 1 || lo[0] != cp);
        for (size_t k = 0; k < n; k++)
            cr_assert_leq(lo[k], 0x10FFFF);
        n = nn_uc_nfd(cp, d);
        cr_assert(n >= 1 && n <= NN_UC_MAX_DECOMP, "U+%04X", cp);
        if (n == 1 && d[0] == cp)
            continue;
        n_nfd++;
        if (n > max_nfd)
            max_nfd = n;
        for (size_t k = 0; k < n; k++) {
            uint32_t dd[NN_UC_MAX_DECOMP];
            cr_assert_eq(nn_uc_nfd(d[k], dd), 1, "U+%04X [%zu]", cp, k);
            cr_assert_eq(dd[0], d[k]);
        }
    }
    /* Python: 1433 code points change under lower(); 2061 + 11172 Hangul
     * decompose; the longest decomposition has 4 code points. */
    cr_assert_eq(n_lower, 1433);
    cr_assert_eq(n_nfd, 2061 + 11172);
    cr_assert_eq(max_nfd, 4);
    uint32_t d[NN_UC_MAX_DECOMP];
    cr_assert_eq(nn_uc_nfd(0xD4DB, d), 3); /* 퓛 */
    cr_assert_eq(d[0], 0x1111);
    cr_assert_eq(d[1], 0x1171);
    cr_assert_eq(d[2], 0x11B6);
    cr_assert_eq(nn_uc_nfd(0x110000, d), 1);
    cr_assert_eq(d[0], 0x110000);
}

/* ========================================================================
 * UTF-8
 * ======================================================================== */

/* len bytes of src copied to the end of a page followed by a PROT_NONE page,
 * so reading past the input faults. */
typedef struct guarded {
    unsigned char *map;
    size_t page;
    char *p;
} guarded;

static guarded guard(const void *src, size_t len)
{
    guarded g;
    g.page = (size_t)sysconf(_SC_PAGESIZE);
    cr_assert_leq(len, g.page);
    g.map = mmap(NULL, 2 * g.page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(g.map, MAP_FAILED);
    cr_assert_eq(mprotect(g.map + g.page, g.page, PROT_NONE), 0);
    g.p = (char *)g.map + g.page - len;
    memcpy(g.p, src, len);
    return g;
}

static void unguard(guarded *g) { munmap(g->map, 2 * g->page); }

Test(utf8, round_trip_every_code_point)
{
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        char buf[4];
        size_t n = nn_utf8_encode(cp, buf);
        uint32_t back;
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            cr_assert_eq(n, 3);
            cr_assert_eq(memcmp(buf, "\xEF\xBF\xBD", 3), 0);
            continue;
        }
        size_t want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        cr_assert_eq(n, want, "U+%04X", cp);
        cr_assert_eq(nn_utf8_decode(buf, n, &back), n, "U+%04X", cp);
        cr_assert_eq(back, cp);
        /* Every strict prefix is truncated: FFFD, one byte. */
        for (size_t k = 1; k < n; k++) {
            cr_assert_eq(nn_utf8_decode(buf, k, &back), 1);
            cr_assert_eq(back, 0xFFFD);
        }
    }
    char buf[4];
    cr_assert_eq(nn_utf8_encode(0x110000, buf), 3);
    cr_assert_eq(memcmp(buf, "\xEF\xBF\xBD", 3), 0);
}

typedef struct bad_seq {
    const char *name;
    const char *bytes;
    size_t len;
} bad_seq;

#define BAD(name, s) {name, s, sizeof(s) - 1}

static const bad_seq bad_seqs[] = {
    BAD("overlong 2-byte C0", "\xC0\x80"),
    BAD("overlong 2-byte C1", "\xC1\xBF"),
    BAD("overlong 3-byte", "\xE0\x80\x80"),
    BAD("overlong 3-byte max", "\xE0\x9F\xBF"),
    BAD("overlong 4-byte", "\xF0\x80\x80\x80"),
    BAD("overlong 4-byte max", "\xF0\x8F\xBF\xBF"),
    BAD("surrogate low", "\xED\xA0\x80"),
    BAD("surrogate high", "\xED\xBF\xBF"),
    BAD("above U+10FFFF", "\xF4\x90\x80\x80"),
    BAD("F5 lead", "\xF5\x80\x80\x80"),
    BAD("F7 lead", "\xF7\xBF\xBF\xBF"),
    BAD("F8 5-byte", "\xF8\x88\x80\x80\x80"),
    BAD("FC 6-byte", "\xFC\x84\x80\x80\x80\x80"),
    BAD("FE", "\xFE"),
    BAD("FF", "\xFF"),
    BAD("truncated 2-byte", "\xC3"),
    BAD("truncated 3-byte", "\xE2\x82"),
    BAD("truncated 3-byte then ASCII", "\xE2\x82" "A"),
    BAD("truncated 4-byte", "\xF0\x9F\x98"),
    BAD("truncated 4-byte then ASCII", "\xF0\x9F\x98" "A"),
    BAD("bad continuation", "\xC3\x41"),
    BAD("bad 3rd byte", "\xE2\x82\xC0"),
    BAD("bad 4th byte", "\xF0\x9F\x98\x20"),
    BAD("stray continuation 80", "\x80"),
    BAD("stray continuation BF", "\xBF\x41"),
    BAD("lead then lead", "\xC3\xC3\xA9"),
};

Test(utf8, every_invalid_class_is_fffd_one_byte)
{
    for (size_t i = 0; i < COUNT(bad_seqs); i++) {
        guarded g = guard(bad_seqs[i].bytes, bad_seqs[i].len);
        uint32_t cp = 0;
        cr_expect_eq(nn_utf8_decode(g.p, bad_seqs[i].len, &cp), 1, "%s", bad_seqs[i].name);
        cr_expect_eq(cp, 0xFFFD, "%s: U+%04X", bad_seqs[i].name, cp);
        unguard(&g);
    }
}

/* An independent definition: a sequence is valid iff its payload bits give a
 * scalar value whose shortest encoding has exactly this length. */
static bool ref_valid(const unsigned char *b, size_t n, uint32_t *cp)
{
    static const unsigned char lead_mask[5] = {0, 0x80, 0xE0, 0xF0, 0xF8};
    static const unsigned char lead_bits[5] = {0, 0x00, 0xC0, 0xE0, 0xF0};
    if ((b[0] & lead_mask[n]) != lead_bits[n])
        return false;
    uint32_t v = b[0] & (uint32_t)(~lead_mask[n] & 0x7F);
    for (size_t i = 1; i < n; i++) {
        if ((b[i] & 0xC0) != 0x80)
            return false;
        v = (v << 6) | (b[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return false;
    *cp = v;
    return true;
}

/* Every 1-, 2- and 3-byte input, and random 4-byte ones, against the
 * reference: the decoder takes the longest valid sequence at the start, else
 * one byte as U+FFFD. */
Test(utf8, exhaustive_against_reference)
{
    unsigned char b[4];
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (uint64_t i = 0; i < (1u << 24) + (1u << 22); i++) {
        size_t len;
        if (i < 256) {
            len = 1;
            b[0] = (unsigned char)i;
        } else if (i < 256 + 65536) {
            len = 2;
            b[0] = (unsigned char)(i >> 8);
            b[1] = (unsigned char)i;
        } else if (i < (1u << 24)) {
            len = 3;
            b[0] = (unsigned char)(i >> 16);
            b[1] = (unsigned char)(i >> 8);
            b[2] = (unsigned char)i;
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            len = 4;
            b[0] = (unsigned char)(0xF0 | (rng & 0x0F)); /* mostly 4-byte leads */
            b[1] = (unsigned char)(rng >> 8);
            b[2] = (unsigned char)(0x80 | ((rng >> 16) & 0x7F)); /* mostly continuations */
            b[3] = (unsigned char)(rng >> 24);
        }
        uint32_t want = 0xFFFD, got;
        size_t want_n = 1;
        for (size_t n = len; n >= 1; n--) {
            uint32_t v;
            if (ref_valid(b, n, &v)) {
                want = v;
                want_n = n;
                break;
            }
        }
        size_t got_n = nn_utf8_decode((const char *)b, len, &got);
        if (got_n != want_n || got != want)
            cr_assert_fail("%02X %02X %02X %02X (len %zu): %zu U+%04X, want %zu U+%04X", b[0],
                           b[1], b[2], b[3], len, got_n, got, want_n, want);
    }
}

/* Mixed text: ASCII, 2-, 3- and 4-byte characters. */
static const char mixed[] = "a\xC3\xA9" "b\xE2\x82\xAC" "c\xF0\x9F\x98\x80" "\xE4\xB8\xAD"
                            "\xF0\x90\x8D\x88" "z";

Test(utf8, complete_prefix_every_cut)
{
    size_t len = sizeof(mixed) - 1;
    /* Code point boundaries of mixed. */
    bool boundary[sizeof(mixed)] = {false};
    for (size_t p = 0; p < len;) {
        boundary[p] = true;
        uint32_t cp;
        size_t n = nn_utf8_decode(mixed + p, len - p, &cp);
        cr_assert_neq(cp, 0xFFFD);
        p += n;
    }
    boundary[len] = true;
    for (size_t cut = 0; cut <= len; cut++) {
        guarded g = guard(mixed, cut);
        size_t want = cut;
        while (!boundary[want])
            want--;
        cr_expect_eq(nn_utf8_complete_prefix(g.p, cut), want, "cut %zu", cut);
        unguard(&g);
    }
}

Test(utf8, complete_prefix_invalid_tails_go_now)
{
    /* Bytes that can never become valid are not held back. */
    static const bad_seq tails[] = {
        BAD("C0", "ab\xC0"),      BAD("FF", "ab\xFF"),         BAD("F5", "ab\xF5"),
        BAD("E0 80", "ab\xE0\x80"), BAD("ED A0", "ab\xED\xA0"), BAD("F4 90", "ab\xF4\x90"),
        BAD("F0 80", "ab\xF0\x80"), BAD("stray 80", "ab\x80"),  BAD("4 strays", "\x80\x80\x80\x80"),
        BAD("whole then stray", "\xC3\xA9\x80"),
    };
    for (size_t i = 0; i < COUNT(tails); i++) {
        guarded g = guard(tails[i].bytes, tails[i].len);
        cr_expect_eq(nn_utf8_complete_prefix(g.p, tails[i].len), tails[i].len, "%s",
                     tails[i].name);
        unguard(&g);
    }
    /* Valid beginnings are held back, including the restricted second bytes. */
    static const bad_seq held[] = {
        BAD("E0 A0", "ab\xE0\xA0"), BAD("ED 9F", "ab\xED\x9F"), BAD("F0 90", "ab\xF0\x90"),
        BAD("F4 8F BF", "ab\xF4\x8F\xBF"), BAD("C2", "ab\xC2"),  BAD("F4", "ab\xF4"),
    };
    for (size_t i = 0; i < COUNT(held); i++) {
        guarded g = guard(held[i].bytes, held[i].len);
        cr_expect_eq(nn_utf8_complete_prefix(g.p, held[i].len), 2, "%s", held[i].name);
        unguard(&g);
    }
    cr_assert_eq(nn_utf8_complete_prefix("", 0), 0);
}
