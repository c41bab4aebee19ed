#region Using declarations
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
#endregion

// Reader of NinjaTrader 8 text exports for the simulator: the C# twin of bridge/data/nt8files.py
// (read_nt8, detect_format, instrument_from_filename) and of the merge in bridge/nt8/playback.py
// load_stream. The Python reader is the reference: the same files give the same events, the same
// lines are refused with the same reasons (tests/integration/test_csharp_feed.py checks both).
//
// Formats (';'-separated, UTC, minute bars stamped at the END of the bar):
//   ticks        yyyyMMdd HHmmss;price;volume   or   yyyyMMdd HHmmss fffffff;price;volume
//   tick replay  yyyyMMdd HHmmss fffffff;last;bid;ask;volume
//   minute bars  yyyyMMdd HHmmss;open;high;low;close;volume
//   day bars     yyyyMMdd;open;high;low;close;volume  (recognised only to be refused, as load_stream does)
//
// Parsing works on the raw bytes (no Regex, no string per line or field) because a day of ticks is
// millions of lines. Only the file name goes through a Regex, once per file.
namespace Nt8Bridge.Simulator
{
	public enum FeedFormat : byte { Ticks = 0, TickReplay = 1, Minute = 2 }

	/// <summary>One event of a feed. Times are DateTime.Ticks (UTC, 100 ns). For a minute bar, Price is
	/// the close and Time the bar end.</summary>
	// The fields are declared longest first so that the struct is 72 bytes, not 80: a 1.9 M-line tick
	// file is then 137 MB of events instead of 152 MB. Field order is not part of the API.
	public struct FeedEvent
	{
		public long Time;
		public double Price;        // last trade (ticks), or close (bars)
		public double Bid, Ask;     // NaN when the file carries none (plain tick files, minute bars)
		public long Volume;
		public double Open, High, Low;  // bars only; NaN for ticks
		public int Instrument;      // index of the file's instrument in the playback's instrument list
		public bool IsBar;
	}

	/// <summary>A data file that cannot be played back. The message names the file, the line (when the
	/// problem is in one) and what is wrong, and says what to do.</summary>
	public sealed class FeedException : Exception
	{
		public readonly string FilePath;
		public readonly long Line;  // 1-based; 0 when the problem is not in one line (missing or empty file)

		public FeedException(string filePath, long line, string message) : base(message)
		{
			FilePath = filePath;
			Line = line;
		}
	}

	/// <summary>The events of one file as columns, for bulk transfer (numpy through pythonnet, analysis).</summary>
	public sealed class FeedColumns
	{
		public long[] Time;
		public int[] Instrument;
		public double[] Price, Bid, Ask;
		public long[] Volume;
		public double[] Open, High, Low;
		// byte, not bool: pythonnet exports a bool[] to Python's buffer protocol with a 4-byte item
		// size over 1-byte elements, which reads past the array.
		public byte[] IsBar;

		public static FeedColumns From(FeedEvent[] events)
		{
			if (events == null)
				throw new ArgumentNullException(nameof(events));
			int n = events.Length;
			var c = new FeedColumns
			{
				Time = new long[n], Instrument = new int[n], Price = new double[n], Bid = new double[n],
				Ask = new double[n], Volume = new long[n], Open = new double[n], High = new double[n],
				Low = new double[n], IsBar = new byte[n]
			};
			for (int i = 0; i < n; i++)
			{
				c.Time[i] = events[i].Time;
				c.Instrument[i] = events[i].Instrument;
				c.Price[i] = events[i].Price;
				c.Bid[i] = events[i].Bid;
				c.Ask[i] = events[i].Ask;
				c.Volume[i] = events[i].Volume;
				c.Open[i] = events[i].Open;
				c.High[i] = events[i].High;
				c.Low[i] = events[i].Low;
				c.IsBar[i] = events[i].IsBar ? (byte)1 : (byte)0;
			}
			return c;
		}
	}

	public sealed class Feed
	{
		public string Path;
		public string InstrumentName;
		public FeedFormat Format;
		public FeedEvent[] Events;
		// Bad lines dropped when read with skipBadLines (the Python reader's on_error="skip"); always 0
		// otherwise, because then the first bad line throws.
		public int SkippedLines;
		public string FirstSkipped;  // the reason for the first dropped line, as a FeedException would say it

		const int DetectLines = 20;  // as nt8files._DETECT_LINES
		const string Advice = "Correct or delete that line, or export the data from NinjaTrader 8 again.";

		// ---------------------------------------------------------------------------------- layouts

		// The four layouts in the order the Python reader tries them: the first that fits decides.
		enum Layout { Tick, TickReplay, Minute, Day }

		static readonly string[][] FieldNames =
		{
			new[] { "price", "volume" },
			new[] { "price", "bid", "ask", "volume" },
			new[] { "open", "high", "low", "close", "volume" },
			new[] { "open", "high", "low", "close", "volume" },
		};
		static readonly int[][] StampLengths = { new[] { 15, 23 }, new[] { 23 }, new[] { 15 }, new[] { 8 } };
		static readonly string[] LayoutText =
		{
			"yyyyMMdd HHmmss[ fffffff];price;volume",
			"yyyyMMdd HHmmss fffffff;last;bid;ask;volume",
			"yyyyMMdd HHmmss;open;high;low;close;volume",
			"yyyyMMdd;open;high;low;close;volume",
		};

		// ------------------------------------------------------------------------------- public API

		/// <summary>Reads a plain or gzip-compressed NT8 export. instrumentName null: taken from the file
		/// name ("ES 06-18.Last.txt.gz" -> "ES 06-18"). skipBadLines false (default, as the Python
		/// reader): the first bad line throws a FeedException that also counts the bad lines after it;
		/// true: bad lines are dropped and counted in SkippedLines.</summary>
		public static Feed Read(string path, int instrument, string instrumentName = null, bool skipBadLines = false)
		{
			if (path == null)
				throw new ArgumentNullException(nameof(path));
			if (Directory.Exists(path))
				throw Problem(path, 0, "is a folder, not a data file; pass the path of an NT8 export such as \"ES 12-23.Last.txt\".");
			if (!File.Exists(path))
				throw Problem(path, 0, "the data file does not exist (the current folder is " + Environment.CurrentDirectory + "); check the path.");
			byte[] gzip = null;
			FileStream fs = null, plain = null;
			long plainLength = 0;
			try
			{
				fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.SequentialScan);
				// Decide by the magic number, not by the name: a renamed export must still load.
				int b0 = fs.ReadByte(), b1 = fs.ReadByte();
				if (b0 == 0x1f && b1 == 0x8b)
				{
					// In memory: the gzip checks below need to search the compressed bytes for each
					// member's trailer. Compressed exports are an order of magnitude smaller than the events.
					if (fs.Length > int.MaxValue - 64)
					{
						fs.Dispose();
						throw Problem(path, 0, "the compressed file is over 2 GB, more than this reader holds in memory; decompress it first.");
					}
					gzip = new byte[fs.Length];
					fs.Position = 0;
					int got = 0, r;
					while (got < gzip.Length && (r = fs.Read(gzip, got, gzip.Length - got)) > 0)
						got += r;
					fs.Dispose();
					fs = null;
					if (got != gzip.Length)
						Array.Resize(ref gzip, got);
				}
				else
				{
					fs.Position = 0;
					plain = fs;
					plainLength = fs.Length;
				}
			}
			catch (Exception e) when (e is IOException || e is UnauthorizedAccessException || e is NotSupportedException
				|| e is ArgumentException || e is System.Security.SecurityException)
			{
				if (fs != null)
					fs.Dispose();
				throw Problem(path, 0, "cannot open the data file (" + e.Message + "); check the path and that the file is readable.");
			}

			try
			{
				Layout layout;
				double lineLength;
				using (var head = new LineReader(gzip != null ? (Stream)new GzipSource(gzip) : new NonClosing(plain), 1 << 16))
					layout = Detect(path, head, out lineLength);
				if (layout == Layout.Day)
					throw Problem(path, 0, "day bars are too coarse to play back; export ticks or minute bars.");

				// Capacity from the size: one final trim instead of repeated doubling of a 100 MB array.
				// A gzip trailer holds the size of the last member (mod 2^32); a damaged one must not make
				// us allocate gigabytes, hence the cap at 40 times the compressed size.
				long textBytes;
				if (gzip != null)
				{
					int at = gzip.Length - 4;
					long isize = at >= 14 ? (uint)(gzip[at] | gzip[at + 1] << 8 | gzip[at + 2] << 16 | gzip[at + 3] << 24) : 0;
					textBytes = Math.Min(isize, 40L * gzip.Length);
				}
				else
				{
					plain.Position = 0;
					textBytes = plainLength;
				}
				long estimate = (long)(textBytes / Math.Max(lineLength, 8.0) * 1.02) + 1024;

				var feed = new Feed
				{
					Path = path,
					InstrumentName = instrumentName ?? InstrumentFromFileName(path),
					Format = (FeedFormat)(int)layout,
				};
				using (var lines = new LineReader(gzip != null ? (Stream)new GzipSource(gzip) : new NonClosing(plain), 1 << 20))
					feed.Events = Parse(path, lines, layout, instrument, (int)Math.Min(estimate, 1 << 26), skipBadLines, feed);
				return feed;
			}
			finally
			{
				if (plain != null)
					plain.Dispose();
			}
		}

		/// <summary>All events of the feeds in time order. Ties keep the order of the feeds in the list,
		/// then the order of the lines (a stable sort, as load_stream's argsort(kind="stable")). A file
		/// whose own times go backwards is sorted too, as load_stream does.</summary>
		public static FeedEvent[] Merge(IList<Feed> feeds)
		{
			if (feeds == null)
				throw new ArgumentNullException(nameof(feeds));
			long total = 0;
			foreach (Feed f in feeds)
				total += f.Events.Length;
			var a = new FeedEvent[total];
			int at = 0;
			foreach (Feed f in feeds)
			{
				Array.Copy(f.Events, 0, a, at, f.Events.Length);
				at += f.Events.Length;
			}
			return StableSortByTime(a);
		}

		/// <summary>The NT8 instrument named by an export's file name, as nt8files.instrument_from_filename:
		/// "ES 06-18.Last.txt.gz" -> "ES 06-18", "SPY.Last.txt" -> "SPY"; a name without the
		/// .Last/.Bid/.Ask part loses only its .gz, .txt and .csv extensions.</summary>
		public static string InstrumentFromFileName(string path)
		{
			string name = System.IO.Path.GetFileName(path);
			Match m = NamePattern.Match(name);
			if (m.Success)
				return m.Groups["inst"].Value;
			foreach (string ext in new[] { ".gz", ".txt", ".csv" })
				if (name.EndsWith(ext, StringComparison.OrdinalIgnoreCase))
					name = name.Substring(0, name.Length - ext.Length);
			return name;
		}

		static readonly Regex NamePattern = new Regex(@"^(?<inst>.+?)\.(?:last|bid|ask)(?:\.txt)?(?:\.gz)?$",
			RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);

		// ---------------------------------------------------------------------------- detection

		// The first of the first 20 non-blank lines that fits a layout decides, as detect_format: a
		// corrupt first line is then reported by the parser with its line number.
		static Layout Detect(string path, LineReader head, out double lineLength)
		{
			long firstNumber = 0;
			string firstText = null;
			int seen = 0;
			long bytes = 0;
			var semi = new int[8];
			lineLength = 32;
			try
			{
				while (seen < DetectLines && head.Next())
				{
					byte[] b = head.Buffer;
					int semis = FindSemis(b, head.Start, head.End, semi);
					if (semis == 0 && IsBlankLine(b, head.Start, head.End))
						continue;
					seen++;
					bytes += head.End - head.Start + 1;
					lineLength = (double)bytes / seen;
					if (firstText == null)
					{
						firstNumber = head.Number;
						firstText = LineText(b, head.Start, head.End);
					}
					int stampEnd = semis > 0 ? semi[0] : head.End;
					for (int k = 0; k < 4; k++)
						if (semis == FieldNames[k].Length && Array.IndexOf(StampLengths[k], stampEnd - head.Start) >= 0
							&& StampDecoder.Check(b, head.Start, stampEnd))
							return (Layout)k;
				}
			}
			catch (GzipDataException e)
			{
				// With some lines in hand the parser reports the damage with its line number.
				if (seen == 0)
					throw Problem(path, head.Number + 1, e.Message + "; " + GzipAdvice);
			}
			catch (IOException e)
			{
				throw Problem(path, head.Number + 1, ReadAdvice(e));
			}
			if (firstText == null)
				throw Problem(path, 0, "no data lines (the file is empty or blank); expected NT8 export lines such as " + LayoutText[0]
					+ ". Export the data from NinjaTrader 8 again.");
			throw Problem(path, firstNumber, "'" + firstText + "' matches no NT8 layout; expected one of: " + string.Join(" | ", LayoutText)
				+ ". Is this a NinjaTrader 8 export (Tools > Historical Data > Export)?");
		}

		// "<path>: line <n>: <what>" (no line part when the problem is not in one line).
		static FeedException Problem(string path, long line, string what)
		{
			return new FeedException(path, line, path + (line > 0 ? ": line " + line : "") + ": " + what);
		}

		static string ReadAdvice(IOException e)
		{
			return "cannot read the file (" + e.Message + "); check that it is readable and not being written to, and copy it again if the disk is failing.";
		}

		// The number of ';' in [start, end), and the positions of the first ones (as many as fit).
		static int FindSemis(byte[] b, int start, int end, int[] semi)
		{
			int n = 0;
			for (int i = start; i < end; i++)
				if (b[i] == (byte)';')
				{
					if (n < semi.Length)
						semi[n] = i;
					n++;
				}
			return n;
		}

		// ------------------------------------------------------------------------------- parsing

		static FeedEvent[] Parse(string path, LineReader lines, Layout layout, int instrument, int capacity, bool skip, Feed feed)
		{
			var events = new FeedEvent[Math.Max(capacity, 16)];
			int count = 0;
			long firstBad = 0, bad = 0;
			string firstReason = null, firstText = null;
			var stamps = new StampDecoder(StampLengths[(int)layout]);
			try
			{
				while (true)
				{
					if (count == events.Length)
						Array.Resize(ref events, checked(events.Length + events.Length / 2 + 16));
					byte[] b = lines.Buffer;
					long volume;
					// Fast path, for the lines as NT8 writes them: parse straight from the buffer, and the
					// line break is found where the volume's digits end, so no byte is looked at twice.
					int p = lines.Pos, v;
					if (p < lines.Safe && (v = ParseFields(b, p, lines.Safe, layout, stamps, ref events[count])) >= 0)
					{
						int lineBreak = PlainVolume(b, v, lines.Safe, out volume);
						if (lineBreak >= 0)
						{
							lines.Accept(lineBreak);
							events[count].Volume = volume;
							events[count].Instrument = instrument;
							count++;
							continue;
						}
					}
					// Anything else (blanks, "5.0" volumes, bad lines, the last line without a break):
					// find the line first, then parse it within its bounds with the full rules.
					if (!lines.Next())
						break;
					b = lines.Buffer;
					if ((v = ParseFields(b, lines.Start, lines.End, layout, stamps, ref events[count])) >= 0
						&& ParseVolume(b, v, lines.End, out volume))
					{
						events[count].Volume = volume;
						events[count].Instrument = instrument;
						count++;
						continue;
					}
					if (IsBlankLine(b, lines.Start, lines.End))
						continue;
					if (bad++ == 0)
					{
						firstBad = lines.Number;
						firstReason = Describe(b, lines.Start, lines.End, layout, stamps);
						firstText = LineText(b, lines.Start, lines.End);
					}
				}
			}
			catch (GzipDataException e)
			{
				throw Problem(path, lines.Number + 1, e.Message + "; " + GzipAdvice);
			}
			catch (IOException e)
			{
				throw Problem(path, lines.Number + 1, ReadAdvice(e));
			}
			if (bad > 0)
			{
				string where = path + ": line " + firstBad + ": " + firstReason + " (the line is '" + firstText + "')";
				if (!skip)
				{
					string more = bad > 1 ? ", and " + (bad - 1) + " more bad line" + (bad > 2 ? "s follow" : " follows") : "";
					throw new FeedException(path, firstBad, where + more + ". " + Advice);
				}
				feed.SkippedLines = (int)Math.Min(bad, int.MaxValue);
				feed.FirstSkipped = where;
			}
			if (count != events.Length)
				Array.Resize(ref events, count);
			return events;
		}

		// The stamp and the price fields of a line into ev: the position where the volume starts, or
		// -1 when anything is wrong (Describe then says what). A number stops at the first byte
		// outside its grammar, and that byte must be the ';' of the next field, so a line with a ';'
		// too few fails here without counting them first (one too many fails in the volume). Kept
		// free of allocations: it runs once per line.
		static int ParseFields(byte[] b, int start, int end, Layout layout, StampDecoder stamps, ref FeedEvent ev)
		{
			long time;
			int p = stamps.DecodeField(b, start, end, out time);
			if (p < 0)
				return -1;
			ev.Time = time;
			double v1, v2, v3, v4;
			switch (layout)
			{
				case Layout.Tick:
					if (!Field(b, ref p, end, out v1))
						return -1;
					ev.Price = v1;
					ev.Bid = ev.Ask = ev.Open = ev.High = ev.Low = double.NaN;
					ev.IsBar = false;
					return p;
				case Layout.TickReplay:
					if (!Field(b, ref p, end, out v1) || !Field(b, ref p, end, out v2) || !Field(b, ref p, end, out v3))
						return -1;
					ev.Price = v1;
					ev.Bid = v2;
					ev.Ask = v3;
					ev.Open = ev.High = ev.Low = double.NaN;
					ev.IsBar = false;
					return p;
				default:  // Minute
					if (!Field(b, ref p, end, out v1) || !Field(b, ref p, end, out v2) || !Field(b, ref p, end, out v3)
						|| !Field(b, ref p, end, out v4))
						return -1;
					// No check of high >= low, of positive prices or of time order: the Python reader
					// accepts them too, and both readers must give the same events.
					ev.Open = v1;
					ev.High = v2;
					ev.Low = v3;
					ev.Price = v4;
					ev.Bid = ev.Ask = double.NaN;
					ev.IsBar = true;
					return p;
			}
		}

		// A volume as NT8 writes it, digits straight up to the line break: the position of that line
		// break, or -1 for anything else (the full rules in ParseVolume then decide).
		static int PlainVolume(byte[] b, int start, int limit, out long value)
		{
			long v = 0;
			int i = start;
			uint d;
			for (; i < limit && (d = (uint)(b[i] - '0')) <= 9; i++)
				v = v * 10 + d;
			value = v;
			if (i == start || i - start > 18 || i == limit || (b[i] != (byte)'\n' && b[i] != (byte)'\r'))
				return -1;
			return i;
		}

		// A number field that a ';' ends; p moves past that ';'.
		static bool Field(byte[] b, ref int p, int end, out double value)
		{
			int stop;
			if (!ParseNumber(b, p, end, out value, out stop) || stop == end || b[stop] != (byte)';')
				return false;
			p = stop + 1;
			return true;
		}

		// Why a line was refused, in the Python reader's words (field count, then stamp, then the
		// first bad field); only for the one line that is reported.
		static string Describe(byte[] b, int start, int end, Layout layout, StampDecoder stamps)
		{
			int want = FieldNames[(int)layout].Length;
			var semi = new int[want];
			int semis = FindSemis(b, start, end, semi);
			if (semis != want)
				return "expected " + (want + 1) + " ';'-separated fields (" + LayoutText[(int)layout] + "), found " + (semis + 1);
			long time;
			int why = stamps.Decode(b, start, semi[0], out time);
			if (why != 0)
			{
				string expect = string.Join(" or ", Array.ConvertAll(StampLengths[(int)layout],
					n => n == 8 ? "yyyyMMdd" : n == 15 ? "yyyyMMdd HHmmss" : "yyyyMMdd HHmmss fffffff"));
				string problem = why == 1 ? "bad timestamp layout" : why == 2 ? "impossible date" : "impossible time of day";
				return problem + " '" + LineText(b, start, semi[0]) + "': expected " + expect;
			}
			string[] names = FieldNames[(int)layout];
			for (int k = 1; k <= want; k++)
			{
				int from = semi[k - 1] + 1, to = k == want ? end : semi[k];
				double v;
				long volume;
				int stop;
				bool ok = k == want ? ParseVolume(b, from, to, out volume) : ParseNumber(b, from, to, out v, out stop) && stop == to;
				if (!ok)
					return "field " + (k + 1) + " (" + names[k - 1] + ") is '" + LineText(b, from, to) + "': expected "
						+ (k == want ? "an integer volume" : "a number for " + names[k - 1]);
			}
			return "bad line";
		}

		// Python's bytes.strip() set minus the line breaks, which end a line here ('\r' too: the fast
		// path must stop at it).
		static bool IsBlank(byte c)
		{
			return c == (byte)' ' || c == (byte)'\t' || c == 0x0b || c == 0x0c;
		}

		static bool IsBlankLine(byte[] b, int start, int end)
		{
			for (int i = start; i < end; i++)
				if (!IsBlank(b[i]))
					return false;
			return true;
		}

		// A line for a message: at most 80 characters (as the Python reader), control characters visible.
		static string LineText(byte[] b, int start, int end)
		{
			string text = Encoding.UTF8.GetString(b, start, Math.Min(end - start, 320));
			var sb = new StringBuilder();
			foreach (char c in text)
			{
				if (sb.Length >= 80)
					break;
				if (c < ' ' || c == '\x7f')
					sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
				else
					sb.Append(c);
			}
			return sb.ToString();
		}

		// ------------------------------------------------------------------------------ stamps

		// Checks the layout of a stamp and turns it into DateTime ticks, in one pass over its bytes.
		sealed class StampDecoder
		{
			readonly int[] lengths;
			int lastDate = -1;   // yyyyMMdd of the previous line: a file has few distinct dates
			long lastDayTicks;

			public StampDecoder(int[] lengths)
			{
				this.lengths = lengths;
			}

			// The stamp at the start of a line: its length is the allowed one that a ';' follows.
			// Returns the position after that ';', or -1 when there is no valid stamp.
			public int DecodeField(byte[] b, int start, int end, out long ticks)
			{
				foreach (int length in lengths)
				{
					int semi = start + length;
					if (semi < end && b[semi] == (byte)';')
						return Decode(b, start, semi, out ticks) == 0 ? semi + 1 : -1;
				}
				ticks = 0;
				return -1;
			}

			// The stamp [start, end): 0 when fine, else the Python reader's problem code: 1 layout,
			// 2 impossible date, 3 impossible time of day.
			public int Decode(byte[] b, int start, int end, out long ticks)
			{
				ticks = 0;
				int length = end - start;
				bool allowed = false;
				foreach (int n in lengths)  // not Array.IndexOf: under Mono that alone doubles the cost of a stamp
					allowed |= n == length;
				if (!allowed)
					return 1;
				// Unrolled on purpose: Mono's JIT neither unrolls a digit loop nor drops its bounds
				// checks, and a loop here costs 2.5 times as much, once per line.
				uint y0 = (uint)(b[start] - '0'), y1 = (uint)(b[start + 1] - '0'), y2 = (uint)(b[start + 2] - '0');
				uint y3 = (uint)(b[start + 3] - '0'), m0 = (uint)(b[start + 4] - '0'), m1 = (uint)(b[start + 5] - '0');
				uint d0 = (uint)(b[start + 6] - '0'), d1 = (uint)(b[start + 7] - '0');
				if ((y0 > 9) | (y1 > 9) | (y2 > 9) | (y3 > 9) | (m0 > 9) | (m1 > 9) | (d0 > 9) | (d1 > 9))
					return 1;
				uint hh = 0, mi = 0, ss = 0, fraction = 0;
				if (length >= 15)
				{
					uint h0 = (uint)(b[start + 9] - '0'), h1 = (uint)(b[start + 10] - '0'), i0 = (uint)(b[start + 11] - '0');
					uint i1 = (uint)(b[start + 12] - '0'), s0 = (uint)(b[start + 13] - '0'), s1 = (uint)(b[start + 14] - '0');
					if ((b[start + 8] != (byte)' ') | (h0 > 9) | (h1 > 9) | (i0 > 9) | (i1 > 9) | (s0 > 9) | (s1 > 9))
						return 1;
					hh = h0 * 10 + h1;
					mi = i0 * 10 + i1;
					ss = s0 * 10 + s1;
					if (length == 23)
					{
						uint f0 = (uint)(b[start + 16] - '0'), f1 = (uint)(b[start + 17] - '0'), f2 = (uint)(b[start + 18] - '0');
						uint f3 = (uint)(b[start + 19] - '0'), f4 = (uint)(b[start + 20] - '0'), f5 = (uint)(b[start + 21] - '0');
						uint f6 = (uint)(b[start + 22] - '0');
						if ((b[start + 15] != (byte)' ') | (f0 > 9) | (f1 > 9) | (f2 > 9) | (f3 > 9) | (f4 > 9) | (f5 > 9) | (f6 > 9))
							return 1;
						fraction = ((((((f0 * 10 + f1) * 10 + f2) * 10 + f3) * 10 + f4) * 10 + f5) * 10) + f6;
					}
				}
				int date = (int)((((y0 * 10 + y1) * 10 + y2) * 10 + y3) * 10000 + (m0 * 10 + m1) * 100 + d0 * 10 + d1);
				if (date != lastDate)
				{
					int year = date / 10000, month = date / 100 % 100, day = date % 100;
					// The Python reader keeps int64 nanoseconds, which span 1678..2261; same limits here.
					if (year < 1678 || year > 2261 || month < 1 || month > 12 || day < 1 || day > DateTime.DaysInMonth(year, month))
						return 2;
					lastDayTicks = new DateTime(year, month, day, 0, 0, 0, DateTimeKind.Utc).Ticks;
					lastDate = date;
				}
				if (hh > 23 || mi > 59 || ss > 59)
					return 3;
				// The fraction is in 100 ns units already, as DateTime ticks.
				ticks = lastDayTicks + (hh * 3600 + mi * 60 + ss) * TimeSpan.TicksPerSecond + fraction;
				return 0;
			}

			// Layout and date only, without a decoder's state: for detection (detect_format's regex
			// looks at the digits only, so an impossible date still names the layout).
			public static bool Check(byte[] b, int start, int end)
			{
				int length = end - start;
				for (int i = 0; i < length; i++)
				{
					bool space = i == 8 || i == 15;
					if (space ? b[start + i] != (byte)' ' : (uint)(b[start + i] - '0') > 9)
						return false;
				}
				return length == 8 || length == 15 || length == 23;
			}
		}

		// ------------------------------------------------------------------------------ numbers

		// Exact powers of ten: a mantissa below 2^53 times or divided by one of them is a single
		// correctly rounded operation, so the result is the nearest double, as a correct parser gives.
		static readonly double[] Pow10 =
		{
			1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
			1e17, 1e18, 1e19, 1e20, 1e21, 1e22
		};

		// The grammar of pandas' C parser (what the Python reader accepts): blanks around, an optional
		// sign, digits with an optional '.', an optional exponent; "4370.", ".75" and "1e3" are numbers,
		// "0x10", "4,370", "1_000", "nan" and "inf" are not. The value must be finite. Parsing starts
		// at start and stops at the first byte that cannot continue the number (after trailing blanks):
		// stop tells where, and the caller decides whether that is where the field ends.
		static bool ParseNumber(byte[] b, int start, int end, out double value, out int stop)
		{
			value = double.NaN;
			int p = start;
			// The blank tests are guarded by one compare: Mono does not inline IsBlank, and exports
			// have no blanks around numbers.
			if (p < end && b[p] <= (byte)' ')
				while (p < end && IsBlank(b[p]))
					p++;
			stop = p;
			int first = p;
			bool negative = false;
			if (p < end && (b[p] == (byte)'-' || b[p] == (byte)'+'))
				negative = b[p++] == (byte)'-';
			ulong mantissa = 0;  // wraps beyond 19 digits; then only ParseRare's result is used
			int digits = 0, scale = 0;
			uint d;
			for (; p < end && (d = (uint)(b[p] - '0')) <= 9; p++)
			{
				mantissa = mantissa * 10 + d;
				digits++;
			}
			if (p < end && b[p] == (byte)'.')
			{
				int from = ++p;
				for (; p < end && (d = (uint)(b[p] - '0')) <= 9; p++)
					mantissa = mantissa * 10 + d;
				scale = p - from;
				digits += scale;
			}
			if (digits == 0)
				return false;
			int exponent = 0;
			if (p < end && (b[p] == (byte)'e' || b[p] == (byte)'E'))
			{
				p++;
				bool down = false;
				if (p < end && (b[p] == (byte)'-' || b[p] == (byte)'+'))
					down = b[p++] == (byte)'-';
				int from = p;
				for (; p < end && (d = (uint)(b[p] - '0')) <= 9; p++)
					if (exponent < 100000)
						exponent = exponent * 10 + (int)d;
				if (p == from)
					return false;
				if (down)
					exponent = -exponent;
			}
			int last = p;
			if (p < end && b[p] <= (byte)' ')
				while (p < end && IsBlank(b[p]))
					p++;
			stop = p;
			exponent -= scale;
			double v;
			if (digits <= 19 && mantissa <= (1UL << 53) && exponent >= -22 && exponent <= 22)
				v = exponent >= 0 ? mantissa * Pow10[exponent] : mantissa / Pow10[-exponent];  // finite
			else if (digits <= 19 && mantissa == 0)
				v = 0;
			else if (!ParseRare(b, first, last, out v) || double.IsNaN(v) || double.IsInfinity(v))
				return false;
			value = negative ? -v : v;
			return true;
		}

		// Long mantissas and large exponents (never seen in exports) take the exact route: the decimal
		// is turned into a ratio of big integers and divided to 54 bits plus a remainder, then rounded
		// half to even. The framework's double.Parse cannot be used: Mono's is off by one unit in the
		// last place for inputs like "8.74512322515672e-09", where pandas (and so the Python reader) is
		// exact. [start, end) is a number the grammar accepted; the caller applies the sign.
		static bool ParseRare(byte[] b, int start, int end, out double value)
		{
			var num = new BigNat();
			int i = start, digits = 0, exponent = 0;
			bool sticky = false;
			if (b[i] == (byte)'-' || b[i] == (byte)'+')
				i++;
			bool fraction = false;
			for (; i < end; i++)
			{
				byte c = b[i];
				if (c == (byte)'.')
				{
					fraction = true;
					continue;
				}
				if (c == (byte)'e' || c == (byte)'E')
					break;
				uint d = (uint)(c - '0');
				if (digits == 0 && d == 0)
				{
					if (fraction)
						exponent--;
					continue;
				}
				// 800 significant digits decide any rounding (a tie needs at most 767); the rest only
				// matter as "something non-zero follows", kept as a final 1 one place further down.
				if (digits < 800)
				{
					num.MulAdd(10, d);
					digits++;
					if (fraction)
						exponent--;
				}
				else
				{
					sticky |= d != 0;
					if (!fraction)
						exponent++;
				}
			}
			if (sticky)
			{
				num.MulAdd(10, 1);
				exponent--;
			}
			if (i < end)  // the exponent, at most 6 digits kept (the grammar made sure there is one)
			{
				i++;
				bool down = b[i] == (byte)'-';
				if (b[i] == (byte)'-' || b[i] == (byte)'+')
					i++;
				int e = 0;
				for (; i < end && e < 100000; i++)
					e = e * 10 + (b[i] - '0');
				exponent += down ? -e : e;
			}
			value = 0;
			if (num.IsZero || exponent + digits < -330)  // below half the smallest subnormal
				return true;
			if (exponent + digits > 310)  // above double.MaxValue
			{
				value = double.PositiveInfinity;
				return true;
			}
			var den = new BigNat();
			den.MulAdd(1, 1);
			for (int k = 0; k < -exponent; k++)
				den.MulAdd(10, 0);
			for (int k = 0; k < exponent; k++)
				num.MulAdd(10, 0);
			// value = num / den = q * 2^e2 with q in [2^53, 2^54): 53 bits, a rounding bit, and the
			// remainder as sticky bit. Below the normal range the exponent is pinned and q has fewer bits.
			int e2 = num.BitLength - den.BitLength - 54;
			ulong q;
			bool rest;
			while (true)
			{
				if (e2 < -1075)
					e2 = -1075;
				q = Divide(num, den, e2, out rest);
				if (q >= 1UL << 54)
					e2++;
				else if (q < 1UL << 53 && e2 > -1075)
					e2--;
				else
					break;
			}
			ulong mantissa = q >> 1;
			if ((q & 1) != 0 && (rest || (mantissa & 1) != 0))
				mantissa++;
			int exp2 = e2 + 1;  // value = mantissa * 2^exp2
			if (mantissa == 1UL << 53)
			{
				mantissa >>= 1;
				exp2++;
			}
			if (mantissa < 1UL << 52)  // subnormal (exp2 is -1074 here)
			{
				value = BitConverter.Int64BitsToDouble((long)mantissa);
				return true;
			}
			int biased = exp2 + 52 + 1023;
			if (biased >= 2047)
			{
				value = double.PositiveInfinity;
				return true;
			}
			value = BitConverter.Int64BitsToDouble(((long)biased << 52) | (long)(mantissa & ((1UL << 52) - 1)));
			return true;
		}

		// floor(num / (den * 2^e2)) (num * 2^-e2 when e2 < 0), known to be below 2^55, by shift and
		// subtract; rest: whether anything remained.
		static ulong Divide(BigNat num, BigNat den, int e2, out bool rest)
		{
			BigNat r = num.Clone(), d = den.Clone();
			if (e2 >= 0)
				d.ShiftLeft(e2);
			else
				r.ShiftLeft(-e2);
			ulong q = 0;
			int top = r.BitLength - d.BitLength;
			rest = true;
			if (top > 56)
				return ulong.MaxValue;  // too big: the caller raises e2
			if (top >= 0)
			{
				d.ShiftLeft(top);
				for (int bit = top; bit >= 0; bit--)
				{
					if (r.CompareTo(d) >= 0)
					{
						r.Subtract(d);
						q |= 1UL << bit;
					}
					d.ShiftRight1();
				}
			}
			rest = !r.IsZero;
			return q;
		}

		// Just enough of a natural number in 32-bit limbs (least significant first) for ParseRare; the
		// framework's BigInteger needs System.Numerics.dll, one more reference for a path real exports never take.
		sealed class BigNat
		{
			uint[] limbs = new uint[8];
			int used;

			public bool IsZero { get { return used == 0; } }

			public int BitLength
			{
				get
				{
					if (used == 0)
						return 0;
					int bits = 32 * (used - 1);
					for (uint top = limbs[used - 1]; top != 0; top >>= 1)
						bits++;
					return bits;
				}
			}

			public BigNat Clone()
			{
				return new BigNat { limbs = (uint[])limbs.Clone(), used = used };
			}

			// this = this * m + a
			public void MulAdd(uint m, uint a)
			{
				ulong carry = a;
				for (int k = 0; k < used; k++)
				{
					ulong t = (ulong)limbs[k] * m + carry;
					limbs[k] = (uint)t;
					carry = t >> 32;
				}
				if (carry != 0)
					Push((uint)carry);
			}

			public void ShiftLeft(int bits)
			{
				if (used == 0 || bits == 0)
					return;
				int whole = bits / 32, part = bits % 32;
				var next = new uint[used + whole + 1];
				for (int k = 0; k < used; k++)
				{
					next[k + whole] |= limbs[k] << part;
					if (part != 0)
						next[k + whole + 1] = limbs[k] >> (32 - part);
				}
				limbs = next;
				used = next.Length;
				Trim();
			}

			public void ShiftRight1()
			{
				for (int k = 0; k < used; k++)
					limbs[k] = (limbs[k] >> 1) | (k + 1 < used ? limbs[k + 1] << 31 : 0);
				Trim();
			}

			public int CompareTo(BigNat other)
			{
				if (used != other.used)
					return used < other.used ? -1 : 1;
				for (int k = used - 1; k >= 0; k--)
					if (limbs[k] != other.limbs[k])
						return limbs[k] < other.limbs[k] ? -1 : 1;
				return 0;
			}

			// this -= other, with this >= other
			public void Subtract(BigNat other)
			{
				long borrow = 0;
				for (int k = 0; k < used; k++)
				{
					long t = (long)limbs[k] - (k < other.used ? other.limbs[k] : 0) - borrow;
					borrow = t < 0 ? 1 : 0;
					limbs[k] = (uint)t;
				}
				Trim();
			}

			void Push(uint limb)
			{
				if (used == limbs.Length)
					Array.Resize(ref limbs, limbs.Length * 2);
				limbs[used++] = limb;
			}

			void Trim()
			{
				while (used > 0 && limbs[used - 1] == 0)
					used--;
			}
		}

		// The volume, [start, end) entirely: integer text that fits a long, or a number text with an
		// integral value of at most 2^62 ("5.0", "1e3"), as the Python reader accepts.
		static bool ParseVolume(byte[] b, int start, int end, out long value)
		{
			int s = start, e = end;
			if (s < e && b[s] <= (byte)' ')
				while (s < e && IsBlank(b[s]))
					s++;
			if (e > s && b[e - 1] <= (byte)' ')
				while (e > s && IsBlank(b[e - 1]))
					e--;
			int i = s;
			bool negative = false;
			if (i < e && (b[i] == (byte)'-' || b[i] == (byte)'+'))
				negative = b[i++] == (byte)'-';
			if (i < e && e - i <= 19)
			{
				// Up to 19 digits fit a ulong; kept exact, as pandas' int64 column keeps them.
				ulong v = 0;
				uint d;
				for (; i < e && (d = (uint)(b[i] - '0')) <= 9; i++)
					v = v * 10 + d;
				if (i == e && v <= (negative ? 9223372036854775808UL : long.MaxValue))
				{
					value = negative ? (long)(0UL - v) : (long)v;
					return true;
				}
			}
			value = 0;
			double x;
			int stop;
			if (!ParseNumber(b, start, end, out x, out stop) || stop != end || x != Math.Floor(x)
				|| Math.Abs(x) > 4611686018427387904.0)  // 2^62
				return false;
			value = (long)x;
			return true;
		}

		// --------------------------------------------------------------------------- merging

		// Natural merge sort on Time: runs already in order (normally each file) are merged pairwise,
		// the left run winning ties, so equal times keep their original order. Files given in time
		// order come out as one run with no copying.
		static FeedEvent[] StableSortByTime(FeedEvent[] a)
		{
			int n = a.Length;
			var bounds = new List<int> { 0 };
			for (int i = 1; i < n; i++)
				if (a[i].Time < a[i - 1].Time)
					bounds.Add(i);
			bounds.Add(n);
			if (bounds.Count <= 2)
				return a;
			var buffer = new FeedEvent[n];
			while (bounds.Count > 2)
			{
				var merged = new List<int>(bounds.Count / 2 + 2);
				int runs = bounds.Count - 1;
				for (int r = 0; r < runs; r += 2)
				{
					int lo = bounds[r], mid = bounds[r + 1];
					merged.Add(lo);
					if (r + 1 == runs)
					{
						Array.Copy(a, lo, buffer, lo, mid - lo);
						continue;
					}
					int hi = bounds[r + 2], i = lo, j = mid, k = lo;
					while (i < mid && j < hi)
						buffer[k++] = a[j].Time < a[i].Time ? a[j++] : a[i++];
					if (i < mid)
						Array.Copy(a, i, buffer, k, mid - i);
					else if (j < hi)
						Array.Copy(a, j, buffer, k, hi - j);
				}
				merged.Add(n);
				bounds = merged;
				FeedEvent[] t = a;
				a = buffer;
				buffer = t;
			}
			return a;
		}

		// ---------------------------------------------------------------------------- lines

		// Splits a byte stream into lines in place. Line ends are "\n", "\r\n" and a lone "\r" (as
		// pandas and Python's text mode; NT8 writes "\r\n"); a BOM at the very start is skipped, as the
		// Python reader does.
		sealed class LineReader : IDisposable
		{
			readonly Stream source;
			byte[] buffer;
			int pos, len;
			bool eof, started;
			public long Number;     // of the current line, 1-based
			public int Start, End;  // the current line is Buffer[Start, End), without its break

			// [Pos, Safe) holds whole lines only: Safe is just past the last '\n' read so far (the end of
			// the data at the end of the file), so a '\r' before it is never the first half of a "\r\n"
			// that the next chunk completes. A file with '\r' line ends only has no safe part; its lines
			// all go through Next.
			public int Safe;

			public int Pos { get { return pos; } }

			// The line from Pos up to the line break at lineBreak was used by the caller.
			public void Accept(int lineBreak)
			{
				Start = pos;
				End = lineBreak;
				Number++;
				pos = lineBreak + 1;
				if (buffer[lineBreak] == (byte)'\r' && pos < len && buffer[pos] == (byte)'\n')
					pos++;
			}

			public LineReader(Stream source, int size)
			{
				this.source = source;
				buffer = new byte[size];
			}

			public byte[] Buffer { get { return buffer; } }

			public bool Next()
			{
				while (true)
				{
					byte[] b = buffer;
					int p = pos, l = len;
					// Bytes from 0x0e up (digits, ';', letters) cannot end a line: one compare for most.
					while (p < l && (b[p] >= 0x0e || (b[p] != (byte)'\n' && b[p] != (byte)'\r')))
						p++;
					if (p < l && (b[p] == (byte)'\n' || p + 1 < l || eof))
					{
						Start = pos;
						End = p;
						Number++;
						pos = p + 1;
						if (b[p] == (byte)'\r' && pos < l && b[pos] == (byte)'\n')
							pos++;
						return true;
					}
					if (!eof)
					{
						// No complete line left (or a '\r' whose '\n' may be in the next chunk): read on
						// and scan the partial line again.
						Fill();
						continue;
					}
					if (pos < l)
					{
						Start = pos;
						End = l;
						Number++;
						pos = l;
						return true;
					}
					return false;
				}
			}

			void Fill()
			{
				int keep = len - pos;
				if (keep > 0 && pos > 0)
					System.Buffer.BlockCopy(buffer, pos, buffer, 0, keep);
				pos = 0;
				len = keep;
				if (len == buffer.Length)
					Array.Resize(ref buffer, checked(buffer.Length * 2));  // a line longer than the buffer
				int r = source.Read(buffer, len, buffer.Length - len);
				if (r <= 0)
					eof = true;
				else
					len += r;
				if (!started && (len >= 3 || eof))
				{
					started = true;
					if (len >= 3 && buffer[0] == 0xef && buffer[1] == 0xbb && buffer[2] == 0xbf)
						pos = 3;
				}
				int safe = len;
				if (!eof)
					while (safe > pos && buffer[safe - 1] != (byte)'\n')
						safe--;
				Safe = safe;
			}

			public void Dispose()
			{
				source.Dispose();
			}
		}

		// A forward-only stream that can only be read: what both readers below are.
		abstract class ReadOnlyStream : Stream
		{
			public override bool CanRead { get { return true; } }
			public override bool CanSeek { get { return false; } }
			public override bool CanWrite { get { return false; } }
			public override long Length { get { throw new NotSupportedException(); } }
			public override long Position { get { throw new NotSupportedException(); } set { throw new NotSupportedException(); } }
			public override void Flush() { }
			public override long Seek(long offset, SeekOrigin origin) { throw new NotSupportedException(); }
			public override void SetLength(long value) { throw new NotSupportedException(); }
			public override void Write(byte[] buffer, int offset, int count) { throw new NotSupportedException(); }
		}

		// Lets a LineReader use the plain file twice (detection, then parsing) without closing it.
		sealed class NonClosing : ReadOnlyStream
		{
			readonly Stream inner;

			public NonClosing(Stream inner)
			{
				this.inner = inner;
			}

			public override int Read(byte[] buffer, int offset, int count) { return inner.Read(buffer, offset, count); }
		}

		// ----------------------------------------------------------------------------- gzip

		const string GzipAdvice =
			"the .gz file is truncated or damaged; copy or download it again, or compress the original export again.";

		sealed class GzipDataException : Exception
		{
			public GzipDataException(string message) : base(message) { }
		}

		// Gzip members (RFC 1952) decompressed one after the other, as Python's gzip.decompress does.
		// GZipStream cannot be used alone: under Mono it silently stops at the end of the first member
		// and silently returns a truncated file's data as if it were complete (measured; .NET Framework
		// 4.8 does not read concatenated members either). So
		// the header is read here, DeflateStream inflates the body, and each member's trailer (CRC-32
		// and size) is checked. DeflateStream reads ahead, so the trailer is found by searching the
		// compressed bytes for the CRC and size just computed; an 8-byte false match is a 2^-64 event.
		sealed class GzipSource : ReadOnlyStream
		{
			readonly byte[] z;
			int next;              // offset of the next member's header, or of what follows the last
			int bodyStart;
			DeflateStream inflate;
			uint crc;
			uint size;
			bool finished;

			public GzipSource(byte[] compressed)
			{
				z = compressed;
			}

			public override int Read(byte[] buffer, int offset, int count)
			{
				while (!finished)
				{
					if (inflate == null && !StartMember())
						break;
					int n;
					try
					{
						n = inflate.Read(buffer, offset, count);
					}
					catch (Exception e) when (e is IOException || e is InvalidDataException)
					{
						throw new GzipDataException("the compressed data is corrupt (" + e.Message + ")");
					}
					if (n > 0)
					{
						crc = Crc32.Update(crc, buffer, offset, n);
						size += (uint)n;
						return n;
					}
					EndMember();
				}
				finished = true;
				return 0;
			}

			bool StartMember()
			{
				int p = next;
				if (p > 0)
				{
					// After a member: zero padding, then another member or the end (gzip.decompress).
					while (p < z.Length && z[p] == 0)
						p++;
					if (p == z.Length)
						return false;
					if (p + 1 >= z.Length || z[p] != 0x1f || z[p + 1] != 0x8b)
						throw new GzipDataException("unexpected bytes after the end of the gzip data (at byte " + p + ")");
				}
				if (z.Length - p < 18)
					throw new GzipDataException("the gzip data ends inside a member header");
				if (z[p + 2] != 8)
					throw new GzipDataException("unknown gzip compression method " + z[p + 2]);
				int flags = z[p + 3];
				int q = p + 10;
				if ((flags & 4) != 0)  // FEXTRA
				{
					if (q + 2 > z.Length)
						throw new GzipDataException("the gzip data ends inside a member header");
					q += 2 + (z[q] | z[q + 1] << 8);
				}
				if ((flags & 8) != 0)  // FNAME
					q = SkipZeroTerminated(q);
				if ((flags & 16) != 0)  // FCOMMENT
					q = SkipZeroTerminated(q);
				if ((flags & 2) != 0)  // FHCRC
					q += 2;
				if (q + 8 > z.Length)
					throw new GzipDataException("the gzip data ends inside a member header");
				bodyStart = q;
				inflate = new DeflateStream(new MemoryStream(z, q, z.Length - q, false), CompressionMode.Decompress);
				crc = 0;
				size = 0;
				return true;
			}

			int SkipZeroTerminated(int q)
			{
				while (q < z.Length && z[q] != 0)
					q++;
				if (q >= z.Length)
					throw new GzipDataException("the gzip data ends inside a member header");
				return q + 1;
			}

			void EndMember()
			{
				inflate.Dispose();
				inflate = null;
				// The smallest deflate body is 2 bytes; the trailer follows it.
				byte first = (byte)crc;
				for (int p = bodyStart + 2; p + 8 <= z.Length; p++)
				{
					if (z[p] == first && LittleEndian32(z, p) == crc && LittleEndian32(z, p + 4) == size)
					{
						next = p + 8;
						return;
					}
				}
				throw new GzipDataException("the gzip data ends early or fails its CRC check");
			}

			static uint LittleEndian32(byte[] b, int at)
			{
				return (uint)(b[at] | b[at + 1] << 8 | b[at + 2] << 16 | b[at + 3] << 24);
			}

			protected override void Dispose(bool disposing)
			{
				if (disposing && inflate != null)
				{
					inflate.Dispose();
					inflate = null;
				}
				base.Dispose(disposing);
			}

		}

		// CRC-32 (IEEE, as gzip), slicing by 8: the check costs a fraction of the parse.
		static class Crc32
		{
			static readonly uint[] Table = Build();

			static uint[] Build()
			{
				var t = new uint[8 * 256];
				for (uint i = 0; i < 256; i++)
				{
					uint c = i;
					for (int k = 0; k < 8; k++)
						c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
					t[i] = c;
				}
				for (int i = 0; i < 256; i++)
					for (int s = 1; s < 8; s++)
						t[s * 256 + i] = (t[(s - 1) * 256 + i] >> 8) ^ t[t[(s - 1) * 256 + i] & 0xff];
				return t;
			}

			public static uint Update(uint crc, byte[] b, int offset, int count)
			{
				uint[] t = Table;
				uint c = ~crc;
				int i = offset, end = offset + count;
				for (; i + 8 <= end; i += 8)
				{
					uint one = c ^ (uint)(b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24);
					uint two = (uint)(b[i + 4] | b[i + 5] << 8 | b[i + 6] << 16 | b[i + 7] << 24);
					c = t[7 * 256 + (one & 0xff)] ^ t[6 * 256 + ((one >> 8) & 0xff)] ^ t[5 * 256 + ((one >> 16) & 0xff)]
						^ t[4 * 256 + (one >> 24)] ^ t[3 * 256 + (two & 0xff)] ^ t[2 * 256 + ((two >> 8) & 0xff)]
						^ t[256 + ((two >> 16) & 0xff)] ^ t[two >> 24];
				}
				for (; i < end; i++)
					c = t[(c ^ b[i]) & 0xff] ^ (c >> 8);
				return ~c;
			}
		}
	}
}
